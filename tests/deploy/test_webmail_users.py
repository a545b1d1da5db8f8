"""RoundCube finds a user by username and IMAP host name. The webmail reaches its mail node
under the IMAP service name (/etc/hosts on the webmail hosts), so that name, and with
it every user's address book and settings, stays when mail nodes are replaced (an OS
upgrade replaces them all). Deploys from before keyed users by a mail node's own name:
the deploy re-keys them once, and the user finds their contacts at the next login."""

from __future__ import annotations

import uuid
from typing import Any

from playwright.sync_api import expect

from tests.conftest import pyinfra
from tests.deploy.test_webmail_backup import db_host, save_contact, sql
from tests.e2e.test_webmail import expect_mailbox
from tests.e2e.webmail_browser import Webmail

USER_INDEX = 5  # an account no other webmail test logs in with
REKEY_OP = "RoundCube's users keyed by the IMAP service name"


def changed(output: str, operation: str) -> int:
    """On how many hosts ``operation`` changed something (pyinfra's results table)."""
    for line in output.splitlines():
        if f"| {operation} " in line:
            cells = line.split(operation, 1)[1].split()
            if len(cells) == 4:  # hosts, success, error, no change (not "Starting ...")
                return 0 if cells[1] == "-" else int(cells[1])
    raise AssertionError(f"no results row for {operation!r}")


def test_a_user_keyed_by_a_mail_nodes_name_finds_their_contacts_after_the_deploy(
    lab: dict[str, Any], lab_ssh: Any, webmail: Webmail
) -> None:
    account = lab["accounts"][USER_INDEX]
    user = account["user"]
    service = f"imap.{lab['domain']}"
    token = uuid.uuid4().hex[:10]
    db = db_host(lab)

    webmail.login(user, account["password"])
    expect_mailbox(webmail)
    save_contact(webmail, token, f"rekey-{token}@example.org")
    key = f"SELECT mail_host FROM users WHERE username = '{user}' ORDER BY user_id"
    assert sql(lab_ssh, db, key).split() == [service]

    # As a deploy from before left it: keyed by the mail node the webmail used then.
    node = next(h["name"] for h in lab["hosts"] if "mail" in h["groups"])
    sql(
        lab_ssh,
        db,
        f"UPDATE users SET mail_host = '{node}.{lab['domain']}' WHERE username = '{user}'",
    )
    webmail.command("#taskmenu a.logout")
    expect(webmail.page.locator("#rcmloginuser")).to_be_visible()

    deploy = pyinfra("inventory/lab.py", "deploy.py")
    assert deploy.returncode == 0, deploy.stdout[-3000:]
    assert changed(deploy.stdout + deploy.stderr, REKEY_OP) == 1, deploy.stdout[-3000:]
    assert sql(lab_ssh, db, key).split() == [service]

    webmail.login(user, account["password"])
    expect_mailbox(webmail)
    webmail.open("?_task=addressbook")
    expect(webmail.page.locator("#contacts-table")).to_contain_text(token)
    assert sql(lab_ssh, db, key).split() == [service]  # no second, empty user
