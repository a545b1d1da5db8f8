"""Brute-force protection: an address that keeps failing to log in (IMAP, SMTP AUTH,
webmail) is refused by that host for the site's ban time, a legitimate user from another
address keeps working throughout, and the ban expires.

Attackers and the legitimate user are addresses of the lab host on the lab bridge (the
last client addresses; the first one is the matrix tests' and is never banned in the
lab), so no traffic leaves this machine.
"""

from __future__ import annotations

import contextlib
import imaplib
import socket
import threading
import time
import urllib.error
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.conftest import password_of, patience
from tests.e2e import smtp_client
from tests.e2e.imap_client import authenticate as imap_auth
from tests.e2e.imap_client import open_session as imap_session
from tests.e2e.webmail_http import WebmailSession


@dataclass
class Attack:
    service: str
    host: str  # address of the host attacked
    port: int  # a port the ban must close
    attacker: str
    user: str
    failures_sent: int = 0
    banned_after_s: float | None = None
    lifted_after_s: float | None = None
    log: list[str] = field(default_factory=list)


def _refused(src: str, address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=3, source_address=(src, 0)):
            return False
    except (ConnectionRefusedError, TimeoutError, OSError):
        return True


def _imap_try(lab: dict[str, Any], src: str, host: str, user: str, password: str) -> bool:
    client = imap_session(host, "tls", lab, source=src)
    try:
        imap_auth(client, "LOGIN", user, password)
        return True
    except imaplib.IMAP4.error:
        return False
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            client.logout()


def _smtp_try(lab: dict[str, Any], src: str, host: str, user: str, password: str) -> bool:
    client = smtp_client.open_session(host, "starttls", lab, source=src)
    try:
        return smtp_client.authenticate(client, "PLAIN", user, password)[0] == 235
    finally:
        smtp_client.close(client)


def _web_try(lab: dict[str, Any], src: str, host: str, user: str, password: str) -> bool:
    session = WebmailSession(lab, base=f"https://{host}/", source=src)
    try:
        session.login(user, password)
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            return False
        raise
    return session.logged_in_as() == user


TRY: dict[str, Callable[[dict[str, Any], str, str, str, str], bool]] = {
    "imap": _imap_try,
    "smtp": _smtp_try,
    "webmail": _web_try,
}


def _run(lab: dict[str, Any], a: Attack, limit: int, ban_s: int) -> Attack:
    """Fail up to ``limit`` times (fewer if failures of an earlier run still count), see
    the ban, wait for it to lift, then log in properly."""
    login = TRY[a.service]
    last_attempt = answered = time.monotonic()
    while a.failures_sent < limit and not _refused(a.attacker, a.host, a.port):
        last_attempt = time.monotonic()
        assert not login(lab, a.attacker, a.host, a.user, "not-the-password")
        answered = time.monotonic()
        a.failures_sent += 1
    # The server logs the failure at once but answers it only after Dovecot's penalty
    # delay, so the ban may start before the client sees its last failure; and the
    # client's goodbye after it may wait out its timeout (the ban drops it). fail2ban then
    # has 30 s (scaled for the target) from the answer.
    while not _refused(a.attacker, a.host, a.port):
        if time.monotonic() - answered > patience(30):
            return a  # never banned: the test reports it
        time.sleep(0.5)
    a.banned_after_s = time.monotonic() - last_attempt
    while _refused(a.attacker, a.host, a.port):
        if time.monotonic() - last_attempt > ban_s + 60:
            return a  # never lifted
        time.sleep(1)
    a.lifted_after_s = time.monotonic() - last_attempt
    assert login(lab, a.attacker, a.host, a.user, password_of(lab, a.user))
    return a


@pytest.fixture(scope="module")
def limits(lab) -> dict[str, int]:
    return yaml.safe_load(open(lab["site_file"]))["bruteforce"]


def test_guessing_addresses_are_banned_others_are_not_and_bans_expire(lab, limits) -> None:
    mail = [h["address"] for h in lab["hosts"] if "mail" in h["groups"]]
    web = next(h["address"] for h in lab["hosts"] if "webmail" in h["groups"])
    clients = lab["client_addresses"]
    legit = clients[-4]
    attacks = [
        Attack("imap", mail[0], 993, clients[-1], "alice"),
        Attack("smtp", mail[-1], 587, clients[-2], "bob"),
        Attack("webmail", web, 443, clients[-3], "carol"),
    ]
    # The legitimate user logs in from another address through every attacked service,
    # all along, and must never fail.
    stop = threading.Event()
    legit_results: list[tuple[str, bool]] = []

    def legitimate() -> None:
        while not stop.is_set():
            for a in attacks:
                ok = TRY[a.service](lab, legit, a.host, "dave", password_of(lab, "dave"))
                legit_results.append((a.service, ok))
            time.sleep(1)

    watcher = threading.Thread(target=legitimate, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=len(attacks)) as pool:
            done = list(
                pool.map(lambda a: _run(lab, a, limits["max_failures"], limits["ban_s"]), attacks)
            )
    finally:
        stop.set()
        watcher.join(timeout=120)

    for a in done:
        assert 1 <= a.failures_sent <= limits["max_failures"], a
        assert a.banned_after_s is not None, f"{a.service}: {a.attacker} was never banned"
        assert a.lifted_after_s is not None, f"{a.service}: the ban on {a.attacker} never lifted"
        # Lifted after the ban time, counted from the last failed attempt.
        assert a.lifted_after_s >= limits["ban_s"] - 5, (a.service, a.lifted_after_s)
    failures = [s for s, ok in legit_results if not ok]
    assert legit_results and not failures, f"the legitimate user failed on {failures}"
    assert {s for s, _ in legit_results} == {"imap", "smtp", "webmail"}


def test_the_limits_are_the_sites(lab, lab_ssh, limits) -> None:
    for h in lab["hosts"]:
        if not {"mail", "webmail"} & set(h["groups"]):
            continue
        jail = "mailcluster-auth" if "mail" in h["groups"] else "mailcluster-webmail"
        out = lab_ssh(
            h["name"],
            f"fail2ban-client get {jail} maxretry; fail2ban-client get {jail} findtime; "
            f"fail2ban-client get {jail} bantime; fail2ban-client get {jail} ignoreip",
        ).stdout
        values = out.split()
        assert values[:3] == [
            str(limits["max_failures"]),
            str(limits["window_s"]),
            str(limits["ban_s"]),
        ], out
        for other in lab["hosts"]:  # the cluster's own hosts are never banned
            assert other["address"] in out, (h["name"], other["address"], out)
