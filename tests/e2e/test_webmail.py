"""The webmail as a user meets it: HTTPS only, RoundCube logs in with the IMAP password,
shows delivered mail, sends with attachments up to the site's limit and refuses larger ones
with its own message (never nginx's bare 413).

Driven from the lab host with Debian's Chromium (tests/e2e/webmail_browser.py); each step's
screenshot is in artifacts/webmail/<test>-<NN>-<step>.png.
"""

from __future__ import annotations

import email
import email.policy
import http.client
import os
import re
import smtplib
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Playwright, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from mailcluster import site as site_file
from tests.e2e.imap_client import login as imap_login
from tests.e2e.webmail_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    RECORD_MESSAGES,
    TIMEOUT_MS,
    Webmail,
    browser_watchdog,
    poll,
    trust_lab_ca,
)

DEADLINE = 60
# Closing a page or the browser takes well under a second; after this it is a hang.
CLOSE_TIMEOUT_S = 60
MIB = 1024 * 1024
HSTS_MIN_AGE = 365 * 24 * 3600  # a year: what browsers' preload lists ask for


# -- the lab ------------------------------------------------------------------------------


def webmail_url(lab: dict[str, Any]) -> str:
    return str(lab["endpoints"]["webmail"])


def webmail_host(lab: dict[str, Any]) -> str:
    return urllib.parse.urlsplit(webmail_url(lab)).hostname or ""


def sender(lab: dict[str, Any]) -> dict[str, str]:
    return dict(lab["accounts"][0])


def recipient(lab: dict[str, Any]) -> dict[str, str]:
    return dict(lab["accounts"][1])


def bystander(lab: dict[str, Any]) -> dict[str, str]:
    return dict(lab["accounts"][2])


def imap_side_of_webmail_logins(lab: dict[str, Any], lab_ssh: Any, user: str) -> str:
    """For a failure's message: each mail node's failed-login penalties and its last
    minutes of Dovecot log for ``user``, and the webmail hosts' RoundCube errors."""
    report = []
    for h in lab["hosts"]:
        if "mail" in h["groups"]:
            command = (
                "doveadm penalty; journalctl -u dovecot --since -3min --no-pager -o short-precise"
                f" | grep -F '{user}' | tail -n 20"
            )
        elif "webmail" in h["groups"]:
            command = (
                "journalctl -t roundcube --since -3min --no-pager -o short-precise | tail -n 20"
            )
        else:
            continue
        out = lab_ssh(h["name"], command, check=False, timeout=30)
        report.append(f"--- {h['name']}: {command}\n{out.stdout}{out.stderr}")
    return "\n".join(report)


def address(lab: dict[str, Any], account: dict[str, str]) -> str:
    return f"{account['user']}@{lab['domain']}"


def attachment_limit(lab: dict[str, Any]) -> int:
    return site_file.load(lab["site_file"]).attachment_max_bytes


def show_bytes(size: int) -> str:
    """A size as RoundCube writes it (rcmail_action::show_bytes): "2.0 MB", "12 MB"."""
    for unit, scale in (("GB", 1024**3), ("MB", MIB)):
        if size >= scale:
            value = size / scale
            return f"{int(value)} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{round(size / 1024)} KB"


def unique(what: str) -> str:
    return f"{what} {uuid.uuid4().hex[:12]}"


def smtp_deliver(lab: dict[str, Any], to: str, subject: str, body: str) -> None:
    """Hand a message for a local user to a mail node's port 25, as the MX would get it."""
    msg = EmailMessage()
    msg["From"] = "sender@example.org"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<webmail-{uuid.uuid4().hex}@example.org>"
    msg.set_content(body)
    with smtplib.SMTP(lab["endpoints"]["smtp"], 25, timeout=30) as smtp:
        smtp.ehlo("client.example.org")
        assert smtp.send_message(msg) == {}


def imap_find(
    lab: dict[str, Any], account: dict[str, str], subject: str, folder: str = "INBOX"
) -> list[email.message.EmailMessage]:
    """The messages in ``account``'s ``folder`` whose subject contains ``subject`` (none
    when the folder does not exist)."""
    client = imap_login(
        lab["endpoints"]["imap"], "tls", "LOGIN", account["user"], account["password"], lab
    )
    try:
        status, _ = client.select(folder, readonly=True)
        if status != "OK":
            return []
        _, data = client.search(None, "SUBJECT", f'"{subject}"')
        found = []
        for num in data[0].split():
            _, parts = client.fetch(num.decode(), "(BODY.PEEK[])")
            raw = next(p[1] for p in parts if isinstance(p, tuple))
            parsed = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(parsed, email.message.EmailMessage)
            found.append(parsed)
        return found
    finally:
        client.logout()


# -- the browser --------------------------------------------------------------------------


class Browsing:
    """Chromium for the module's tests, trusting the lab CA; started again if a test's
    teardown had to kill a hung one (webmail_browser.browser_watchdog)."""

    def __init__(self, pw: Playwright, home: Path, trusts_lab_ca: bool) -> None:
        self.pw, self.home, self.trusts_lab_ca = pw, home, trusts_lab_ca
        self._browser: Browser | None = None

    @property
    def browser(self) -> Browser:
        if self._browser is None or not self._browser.is_connected():
            self._browser = self.pw.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                env={**os.environ, "HOME": str(self.home)},
            )
        return self._browser

    def killed(self) -> None:
        """The watchdog killed it: the next test starts another (is_connected() may not
        know yet)."""
        self._browser = None

    def close(self) -> None:
        if self._browser is not None and self._browser.is_connected():
            with browser_watchdog(CLOSE_TIMEOUT_S):
                self._browser.close()


@pytest.fixture(scope="module")
def browsing(lab, tmp_path_factory) -> Iterator[Browsing]:  # noqa: ANN001
    home = tmp_path_factory.mktemp("browser-home")
    trusted = trust_lab_ca(home, lab["ca_cert"])
    if not trusted:
        # scripts/host-deps installs it; without it the browser could not check the
        # certificate, and the tests would prove less than they claim.
        pytest.fail("certutil (libnss3-tools) is missing: the browser cannot trust the lab CA")
    with sync_playwright() as pw:
        browsing = Browsing(pw, home, trusted)
        try:
            yield browsing
        finally:
            browsing.close()


@pytest.fixture
def webmail(lab, browsing: Browsing, request) -> Iterator[Webmail]:  # noqa: ANN001
    """A fresh browser context (no cookies, no session) on the webmail's front page."""
    context = browsing.browser.new_context(
        ignore_https_errors=not browsing.trusts_lab_ca,
        viewport={"width": 1280, "height": 800},
        locale="en-US",
    )
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(RECORD_MESSAGES)
    page = context.new_page()
    tab = Webmail(page, webmail_url(lab), request.node.name)
    tab.open()
    try:
        yield tab
    finally:
        try:
            tab.shot("end")  # where the test left the page (on a failure: what went wrong)
        except PlaywrightError:
            pass
        finally:
            with browser_watchdog(CLOSE_TIMEOUT_S) as killed:
                try:
                    context.close()
                except PlaywrightError:
                    if not killed.is_set():
                        raise
            if killed.is_set():
                browsing.killed()
                # The browser's own hang, after the test's checks: said, not hidden.
                warnings.warn(
                    f"{request.node.name}: the browser did not close its page in "
                    f"{CLOSE_TIMEOUT_S} s and was killed",
                    stacklevel=1,
                )


# -- HTTP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/?_task=mail&_mbox=INBOX"])
def test_plain_http_redirects_permanently_to_the_same_page_over_https(lab, path: str) -> None:
    host = webmail_host(lab)
    conn = http.client.HTTPConnection(host, 80, timeout=20)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status in (301, 308), (response.status, response.reason)
    assert response.getheader("Location") == f"https://{host}{path}"


@pytest.mark.parametrize("path", ["/", "/?_task=mail", "/no-such-page", "/config/config.inc.php"])
def test_every_https_response_carries_strict_transport_security(lab, path: str) -> None:
    """Pages, redirects and errors alike (a 403/404 must not drop the header)."""
    ctx = ssl.create_default_context(cafile=lab["ca_cert"])
    url = webmail_url(lab).rstrip("/") + path
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=20) as response:
            status, headers = response.status, response.headers
    except urllib.error.HTTPError as err:  # 403/404: the headers are what matters here
        status, headers = err.code, err.headers
    if path.startswith("/config/"):
        assert status in (403, 404), status  # RoundCube's config is never served
    hsts = headers.get("Strict-Transport-Security")
    assert hsts, f"{url} ({status}) has no Strict-Transport-Security"
    age = re.search(r"max-age=(\d+)", hsts)
    assert age and int(age.group(1)) >= HSTS_MIN_AGE, hsts


# -- logging in ---------------------------------------------------------------------------


def expect_mailbox(webmail: Webmail) -> None:
    """The mail screen: the folder list with the Inbox, and the message list's panel (its
    table has no height while the mailbox is empty, so the panel is what shows)."""
    page = webmail.page
    expect(page.locator("#mailboxlist")).to_contain_text("Inbox")
    expect(page.locator("#layout-list")).to_be_visible()
    expect(page.locator("#messagelist")).to_be_attached()
    assert "_task=mail" in page.url, page.url


def test_the_imap_password_logs_in_to_the_mailbox_and_logout_returns_to_the_login_form(
    lab, lab_ssh, webmail: Webmail
) -> None:
    page = webmail.page
    user = sender(lab)
    expect(page.locator("#rcmloginuser")).to_be_visible()
    webmail.shot("login page")
    nodes = [h["name"] for h in lab["hosts"] if "mail" in h["groups"]]
    since = lab_ssh(nodes[0], "date +%s").stdout.strip()
    webmail.login(user["user"], user["password"])
    expect_mailbox(webmail)
    # RoundCube logged in with one-step PLAIN (SASL-IR), not two-step CRAM-MD5, which
    # Dovecot 2.3.7 (Ubuntu 20.04) can hang over TLS (templates/roundcube).
    methods = set()
    for node in nodes:
        out = lab_ssh(
            node,
            f"journalctl -u dovecot --since @{since} --no-pager "
            f"| grep -F 'user=<{user['user']}>' | grep -o 'method=[A-Z0-9-]*'",
            check=False,
        ).stdout
        methods |= set(out.split())
    assert methods == {"method=PLAIN"}, methods
    expect(page.locator(".header-title.username")).to_contain_text(address(lab, user))
    webmail.shot("mailbox")

    webmail.command("#taskmenu a.logout")
    expect(page.locator("#rcmloginuser")).to_be_visible()
    webmail.wait_for_message(r"successfully terminated the session")
    webmail.shot("logged out")
    # The session is over: the mailbox is behind the login form again.
    webmail.open("?_task=mail&_mbox=INBOX")
    expect(page.locator("#rcmloginuser")).to_be_visible()
    expect(page.locator("#messagelist")).to_have_count(0)
    webmail.shot("mailbox after logout")


def test_a_wrong_password_shows_login_failed_and_no_mailbox(lab, lab_ssh, webmail: Webmail) -> None:
    """With an account no other test logs in with: RoundCube locks a user out of the webmail
    for a minute after 3 failed logins (login_rate_limit), whatever the password."""
    page = webmail.page
    user = bystander(lab)
    started = time.monotonic()
    try:
        webmail.login(user["user"], user["password"] + "-wrong")
    except PlaywrightError as exc:
        # What the IMAP server saw of it: the next failure says where the time went.
        raise AssertionError(
            f"no answer to the login form after {time.monotonic() - started:.0f}s: {exc}\n"
            + imap_side_of_webmail_logins(lab, lab_ssh, user["user"])
        ) from exc
    took = time.monotonic() - started
    if took > 20:
        warnings.warn(f"a wrong password took {took:.0f}s to answer in the webmail", stacklevel=1)
    message = webmail.wait_for_message(r"Login failed")
    assert message == "Login failed.", message
    expect(page.locator("#messagestack")).to_contain_text("Login failed.")
    webmail.shot("login failed")
    expect(page.locator("#rcmloginuser")).to_be_visible()
    expect(page.locator("#messagelist")).to_have_count(0)
    assert "_task=mail" not in page.url, page.url


# -- reading ------------------------------------------------------------------------------


def test_a_message_delivered_by_smtp_is_listed_in_the_inbox_and_opens_with_its_body(
    lab, webmail: Webmail
) -> None:
    page = webmail.page
    user = sender(lab)
    subject = unique("webmail reading probe")
    body = f"Hello from the lab, token {uuid.uuid4().hex}."
    webmail.login(user["user"], user["password"])
    expect_mailbox(webmail)
    smtp_deliver(lab, address(lab, user), subject, body + "\n")

    row = page.locator("#messagelist tbody tr", has_text=subject)
    reloads: list[str] = []

    def listed() -> bool:
        """What a user does: "Refresh" (check for new messages), then reload the page."""
        for step in ("refresh", "reload"):
            if row.count():
                return True
            if step == "refresh":
                webmail.command("#layout-list a.refresh")
            else:
                reloads.append(step)
                page.reload()
                webmail.ready()
            try:
                row.first.wait_for(timeout=3_000)
            except PlaywrightTimeout:
                continue
            return True
        return False

    poll(listed, f"{subject!r} in the message list", DEADLINE, on_timeout=webmail.text)
    webmail.shot("listed")
    if reloads:
        # RoundCube 1.6's Refresh misses mail that arrived before the session's first check
        # when its "getunread" request (sent with "list" after login) saves the session last
        # and drops the folder state "list" saved (database sessions have no locking).
        warnings.warn(
            f"{subject!r} was listed only after {len(reloads)} page reload(s): Refresh did not "
            "show it (RoundCube's list/getunread session race after login)",
            stacklevel=1,
        )

    row.first.click()
    preview = page.frame_locator("#messagecontframe")
    expect(preview.locator("#messagebody")).to_contain_text(body, timeout=TIMEOUT_MS)
    expect(preview.locator(".subject")).to_contain_text(subject)
    webmail.shot("opened")


# -- sending ------------------------------------------------------------------------------


def fill_message(webmail: Webmail, to: str, subject: str, body: str) -> None:
    page = webmail.page
    webmail.compose()
    page.locator("#compose_to ul.recipient-input input").fill(to)
    page.locator("#compose-subject").fill(subject)
    page.locator("#composebody").fill(body)
    expect(page.locator("#_to")).to_have_value(re.compile(re.escape(to)))


def random_file(directory: Path, size: int) -> Path:
    path = directory / f"attachment-{uuid.uuid4().hex[:8]}.bin"
    path.write_bytes(os.urandom(size))
    return path


def test_a_message_with_a_1_5_mb_attachment_is_sent_and_arrives_over_imap_intact(
    lab, webmail: Webmail, tmp_path: Path
) -> None:
    page = webmail.page
    user, to = sender(lab), recipient(lab)
    subject = unique("webmail attachment probe")
    attachment = random_file(tmp_path, 3 * MIB // 2)
    webmail.login(user["user"], user["password"])
    fill_message(webmail, address(lab, to), subject, "The report is attached.\n")
    webmail.shot("composed")

    webmail.attach(attachment)
    listed = page.locator("#attachment-list li[id^='rcmfile']", has_text=attachment.name)
    expect(listed).to_have_count(1, timeout=DEADLINE * 1000)
    expect(listed).to_contain_text("1.5 MB")
    webmail.shot("attached")

    webmail.command("button.btn.send")
    webmail.wait_for_message(r"^Message sent successfully\.$", timeout=DEADLINE)
    webmail.shot("sent")
    errors = [m for m in webmail.messages() if re.search(r"error|failed|could not", m, re.I)]
    assert not errors, errors

    found = poll(
        lambda: imap_find(lab, to, subject),
        f"{subject!r} in {to['user']}'s INBOX",
        DEADLINE,
    )
    assert len(found) == 1, [m["Subject"] for m in found]
    msg = found[0]
    assert address(lab, user) in str(msg["From"]), msg["From"]
    files = [
        (part.get_filename(), part.get_payload(decode=True)) for part in msg.iter_attachments()
    ]
    assert [name for name, _ in files] == [attachment.name], files
    data = files[0][1]
    assert isinstance(data, bytes)
    assert len(data) == attachment.stat().st_size
    assert data == attachment.read_bytes()


def test_a_3_mb_attachment_is_refused_with_roundcubes_message_and_nothing_is_sent(
    lab, webmail: Webmail, tmp_path: Path
) -> None:
    page = webmail.page
    user, to = sender(lab), recipient(lab)
    subject = unique("webmail oversized probe")
    limit = show_bytes(attachment_limit(lab))
    attachment = random_file(tmp_path, 3 * MIB)
    webmail.login(user["user"], user["password"])
    fill_message(webmail, address(lab, to), subject, "Too big to send.\n")
    # The compose screen says the limit before anyone picks a file.
    expect(page.locator("#compose-attachments")).to_contain_text(
        f"Maximum allowed file size is {limit}"
    )
    webmail.shot("composed")

    webmail.attach(attachment)
    expected = f"The uploaded file exceeds the maximum size of {limit}."
    assert webmail.wait_for_message(re.escape(expected)) == expected
    expect(page.locator("#messagestack")).to_contain_text(expected)
    webmail.shot("refused")

    expect(page.locator("#attachment-list li")).to_have_count(0)
    assert page.locator("#compose-subject").input_value() == subject  # nothing lost
    refused = [(status, url) for status, url in webmail.responses if status >= 400]
    assert not refused, refused  # no 413 (nor any error page) behind the message
    assert imap_find(lab, to, subject) == []
    assert imap_find(lab, user, subject, folder="Sent") == []


@pytest.mark.parametrize("size", [5 * MIB // 2, 3 * MIB], ids=["2.5MB", "3MB"])
def test_an_oversized_upload_past_the_browsers_check_gets_roundcubes_message_not_a_413(
    lab, webmail: Webmail, tmp_path: Path, size: int
) -> None:
    """A client that skips RoundCube's size check in the page (an old page, a script) still
    gets RoundCube's own answer from the server, never nginx's bare 413.

    2.5 MB is over PHP's per-file limit (the site's): the message names that limit. 3 MB is
    also over PHP's whole-request limit, and RoundCube then names that one instead."""
    page = webmail.page
    user = sender(lab)
    webmail.login(user["user"], user["password"])
    fill_message(webmail, address(lab, recipient(lab)), unique("webmail upload probe"), "x\n")
    page.evaluate("rcmail.env.max_filesize = 0")  # what the page checks before uploading
    attachment = random_file(tmp_path, size)
    with page.expect_response(lambda r: "_action=upload" in r.url) as upload:
        webmail.attach(attachment)
    response = upload.value
    body = response.text()
    assert response.status == 200, (response.status, body[:500])
    message = webmail.wait_for_message(r"exceeds the maximum size of")
    assert re.fullmatch(r"The uploaded file exceeds the maximum size of [\d.]+ [KMG]B\.", message)
    if size < 3 * MIB:
        limit = show_bytes(attachment_limit(lab))
        assert message == f"The uploaded file exceeds the maximum size of {limit}.", message
    webmail.shot("refused by the server")
    expect(page.locator("#attachment-list li")).to_have_count(0)
