"""RoundCube's database backups (issue 14): the daily dump on the db host, its retention,
and the restore the RUNBOOK gives ("Restore the webmail's database"), proven with what a
user saved through the webmail: a contact and an identity survive dump, drop and
restore, and the user's open webmail session goes on afterwards."""

from __future__ import annotations

import shlex
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from mailcluster import site as site_mod
from mailcluster.roles.db import BACKUP_UNIT, DB_NAME, RESTORE_SCRIPT
from tests.e2e.test_webmail import expect_mailbox
from tests.e2e.webmail_browser import Webmail

USER_INDEX = 3  # an account no other webmail test logs in with


def db_host(lab: dict[str, Any]) -> str:
    hosts = [h for h in lab["hosts"] if "db" in h["groups"]]
    hosts = hosts or [h for h in lab["hosts"] if "webmail" in h["groups"]]
    return str(hosts[0]["name"])


def php_fpm(lab_ssh: Any, host: str, action: str) -> None:
    lab_ssh(
        host,
        f"systemctl {action} $(systemctl list-unit-files --no-legend 'php*-fpm.service'"
        " | awk '{print $1}')",
    )


def sql(lab_ssh: Any, host: str, query: str) -> str:
    cmd = f"cd / && runuser -u postgres -- psql -d {DB_NAME} -tAq -c {shlex.quote(query)}"
    return str(lab_ssh(host, cmd).stdout.strip())


def dumps(lab_ssh: Any, host: str, directory: str) -> list[str]:
    out = lab_ssh(host, f"ls -1 {directory} 2>/dev/null || true").stdout
    return sorted(line for line in out.split() if line)


def save_contact(webmail: Webmail, surname: str, email: str) -> None:
    webmail.open("?_task=addressbook")
    webmail.page.evaluate("rcmail.command('add')")
    form = webmail.page.frame_locator("#contact-frame")
    form.locator("input[name=_firstname]").fill("Backup")
    form.locator("input[name=_surname]").fill(surname)
    form.locator("input[name='_email[]']").fill(email)
    form.locator("button.submit").click()
    webmail.wait_for_message(r"Successfully saved")
    webmail.shot("contact saved")


def save_identity(webmail: Webmail, name: str, email: str) -> None:
    webmail.open("?_task=settings&_action=identities")
    webmail.ready()
    webmail.page.evaluate("rcmail.command('add')")
    form = webmail.page.frame_locator("#preferences-frame")
    form.locator("input[name=_name]").fill(name)
    form.locator("input[name=_email]").fill(email)
    form.locator("button.submit").click()
    webmail.wait_for_message(r"Successfully saved")
    webmail.shot("identity saved")


@pytest.fixture
def backup_dir(lab: dict[str, Any]) -> str:
    return str(site_mod.load(lab["site_file"]).backups.directory)


@pytest.fixture
def php_back_on(lab: dict[str, Any], lab_ssh: Any) -> Iterator[None]:
    yield
    for h in lab["hosts"]:
        if "webmail" in h["groups"]:
            php_fpm(lab_ssh, h["name"], "start")


def test_while_php_fpm_is_stopped_the_webmail_says_it_is_maintained(
    lab: dict[str, Any], lab_ssh: Any, php_back_on: None
) -> None:
    """What a webmail user sees in a maintenance window (the database restored or moved):
    a page that says so, 503 with Retry-After, not nginx's bare 502."""
    web = next(h for h in lab["hosts"] if "webmail" in h["groups"])
    ctx = ssl.create_default_context(cafile=lab["ca_cert"])
    php_fpm(lab_ssh, web["name"], "stop")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"https://{web['address']}/", context=ctx, timeout=30)
    assert refused.value.code == 503
    assert refused.value.headers["Retry-After"] == "60"
    assert "max-age" in refused.value.headers["Strict-Transport-Security"]
    assert "Webmail is being maintained" in refused.value.read().decode()
    php_fpm(lab_ssh, web["name"], "start")
    with urllib.request.urlopen(f"https://{web['address']}/", context=ctx, timeout=30) as page:
        assert "rcmloginuser" in page.read().decode()


def test_the_backup_timer_runs_daily(lab: dict[str, Any], lab_ssh: Any) -> None:
    host = db_host(lab)
    timer = lab_ssh(host, f"systemctl show -p ActiveState,UnitFileState {BACKUP_UNIT}.timer")
    assert "ActiveState=active" in timer.stdout and "UnitFileState=enabled" in timer.stdout
    when = site_mod.load(lab["site_file"]).backups.time
    cal = lab_ssh(host, f"systemctl show -p TimersCalendar --value {BACKUP_UNIT}.timer").stdout
    assert f"*-*-* {when}:00" in cal, cal
    lab_ssh(host, f"systemd-analyze verify {BACKUP_UNIT}.service {BACKUP_UNIT}.timer")


def test_a_contact_and_an_identity_survive_dump_drop_and_restore_and_the_session_goes_on(
    lab: dict[str, Any], lab_ssh: Any, webmail: Webmail, backup_dir: str, php_back_on: None
) -> None:
    host = db_host(lab)
    account = lab["accounts"][USER_INDEX]
    address = f"{account['user']}@{lab['domain']}"
    token = uuid.uuid4().hex[:10]
    contact_email = f"backup-{token}@example.org"
    identity = f"Restored {token}"

    webmail.login(account["user"], account["password"])
    expect_mailbox(webmail)
    save_contact(webmail, token, contact_email)
    save_identity(webmail, identity, address)
    assert sql(lab_ssh, host, f"SELECT count(*) FROM contacts WHERE email LIKE '%{token}%'") == "1"
    assert sql(lab_ssh, host, f"SELECT count(*) FROM identities WHERE name = '{identity}'") == "1"

    # The daily job, run now; then the database is lost.
    before = dumps(lab_ssh, host, backup_dir)
    lab_ssh(host, f"systemctl start {BACKUP_UNIT}.service")
    new = [d for d in dumps(lab_ssh, host, backup_dir) if d not in before]
    assert len(new) == 1 and new[0].startswith(f"{DB_NAME}-") and new[0].endswith(".dump"), new
    mode = lab_ssh(host, f"stat -c '%a %U' {backup_dir}/{new[0]}").stdout.split()
    assert mode == ["600", "root"], mode  # it holds every user's address book
    webs = [h["name"] for h in lab["hosts"] if "webmail" in h["groups"]]
    for w in webs:
        php_fpm(lab_ssh, w, "stop")
    lab_ssh(host, f"cd / && runuser -u postgres -- dropdb {DB_NAME}")

    # The RUNBOOK's restore.
    out = lab_ssh(host, f"{RESTORE_SCRIPT} {backup_dir}/{new[0]}").stdout
    assert f"{DB_NAME} restored from" in out, out
    for w in webs:
        php_fpm(lab_ssh, w, "start")

    # The same browser session goes on: its session row came back with the dump.
    webmail.open("?_task=mail&_mbox=INBOX")
    expect_mailbox(webmail)
    expect(webmail.page.locator(".header-title.username")).to_contain_text(address)
    webmail.open("?_task=addressbook")
    expect(webmail.page.locator("#contacts-table")).to_contain_text(token)
    webmail.open("?_task=settings&_action=identities")
    expect(webmail.page.locator("#identities-table")).to_contain_text(identity)
    webmail.shot("after the restore")


def test_old_dumps_go_only_after_a_new_one_is_in_place(
    lab: dict[str, Any], lab_ssh: Any, backup_dir: str
) -> None:
    host = db_host(lab)
    keep = site_mod.load(lab["site_file"]).backups.keep_days
    old, recent = f"{DB_NAME}-19990101T000000Z.dump", f"{DB_NAME}-19990102T000000Z.dump"
    lab_ssh(
        host,
        f"mkdir -p {backup_dir} && touch -d '{keep + 2} days ago' {backup_dir}/{old} && "
        f"touch -d '{keep - 2} days ago' {backup_dir}/{recent}",
    )
    try:
        # A dump that fails (the database is down) removes nothing and leaves nothing.
        lab_ssh(host, "systemctl stop postgresql")
        failed = lab_ssh(host, f"systemctl start {BACKUP_UNIT}.service", check=False)
        lab_ssh(host, "systemctl start postgresql")
        assert failed.returncode != 0
        listing = lab_ssh(host, f"ls -A {backup_dir}").stdout.split()
        assert old in listing and recent in listing, listing
        assert not [f for f in listing if f.endswith(".partial")], listing
        # A good one: the dump older than keep_days goes, the younger one stays.
        lab_ssh(host, f"systemctl start {BACKUP_UNIT}.service")
        listing = lab_ssh(host, f"ls -A {backup_dir}").stdout.split()
        assert old not in listing and recent in listing, listing
    finally:
        lab_ssh(host, f"rm -f {backup_dir}/{old} {backup_dir}/{recent}; systemctl start postgresql")
