"""IMAP as SERVICE.md promises it, spoken by a real client from the lab host.

The SSL/auth matrix for every user through every mail node; the empty INBOX of a new
user; proxying to the user's backend; a backend that is down; `mailctl passwd`.
"""

from __future__ import annotations

import imaplib
import subprocess
import sys
import time
from typing import Any

import pytest

from mailcluster.passdb import PROXY_TIMEOUT_S
from tests.conftest import (
    ALLOWED_CELLS,
    INVENTORY,
    REPO,
    host_address,
    lab_state_hosts,
    node_address,
    password_of,
    patience,
)
from tests.conftest import backend_of as backend
from tests.e2e.imap_client import (
    authenticate,
    connect,
    login,
    once_more_on_known_hang,
    open_session,
    outcome,
)

MAIL_NODES = [h["name"] for h in lab_state_hosts() if "mail" in h["groups"]] or ["(no lab)"]
USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]


def refused(fn, *args) -> str:  # noqa: ANN001
    with pytest.raises(imaplib.IMAP4.error) as exc:
        fn(*args)
    return str(exc.value)


# -- the matrix ---------------------------------------------------------------------------


@pytest.mark.parametrize("node", MAIL_NODES)
def test_port_143_without_tls_advertises_logindisabled_and_only_cram_md5(lab, node) -> None:
    client = connect(node_address(lab, node), 143, lab)
    try:
        caps = client.capabilities
        assert "LOGINDISABLED" in caps
        assert "STARTTLS" in caps
        assert "AUTH=CRAM-MD5" in caps
        assert "AUTH=PLAIN" not in caps and "AUTH=LOGIN" not in caps
    finally:
        client.shutdown()


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("node", MAIL_NODES)
@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
def test_plaintext_auth_without_tls_is_refused(lab, node, user, mechanism) -> None:
    client = open_session(node_address(lab, node), "plain", lab)
    try:
        message = refused(authenticate, client, mechanism, user, password_of(lab, user))
        assert "PRIVACYREQUIRED" in message or "disallowed" in message.lower(), message
    finally:
        client.shutdown()


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("node", MAIL_NODES)
@pytest.mark.parametrize("mode,mechanism", ALLOWED_CELLS)
def test_allowed_cells_accept_the_right_password(lab, node, user, mode, mechanism) -> None:
    client = login(node_address(lab, node), mode, mechanism, user, password_of(lab, user), lab)
    try:
        status, data = client.select("INBOX", readonly=True)
        assert status == "OK", data
    finally:
        client.logout()


def bad_client(lab: dict[str, Any]) -> str:
    """Failed logins come from another lab-host address: Dovecot penalises (delays) every
    login from an address that failed recently, and the main one must stay clean."""
    return lab["client_addresses"][0]


# A refusal comes after Dovecot's failure delay (2 s) plus the address's auth penalty
# (doubling per failure up to AUTH_PENALTY_MAX_SECS, 15 s): the client waits for both on
# top of its usual timeout (CI saw the 20 s timeout run out under load).
REFUSAL_WAIT_S = 20 + 2 + 15


def attempt(lab, address: str, mode: str, mechanism: str, user: str, password: str) -> str:  # noqa: ANN001
    def once() -> str:
        client = open_session(address, mode, lab, source=bad_client(lab))
        client.sock.settimeout(patience(REFUSAL_WAIT_S))
        return outcome(client, lambda c: authenticate(c, mechanism, user, password))

    return once_more_on_known_hang(lab, address, once)


@pytest.mark.parametrize("node", MAIL_NODES)
def test_allowed_cells_refuse_a_wrong_password(lab, node) -> None:
    from concurrent.futures import ThreadPoolExecutor

    # One user local to this node and one proxied, every cell; concurrently, since each
    # failure costs the auth penalty delay. All results are checked, so none hides another.
    cases = [(m, mech, u) for m, mech in ALLOWED_CELLS for u in (USERS[0], USERS[1])]
    with ThreadPoolExecutor(len(cases)) as pool:
        results = list(
            pool.map(
                lambda c: attempt(lab, node_address(lab, node), c[0], c[1], c[2], "wrong-password"),
                cases,
            )
        )
    failed = {c: r for c, r in zip(cases, results, strict=True) if "AUTHENTICATIONFAILED" not in r}
    assert failed == {}


# -- mailbox ------------------------------------------------------------------------------


def test_a_user_without_mail_sees_an_empty_inbox_and_gets_a_private_maildir(lab, lab_ssh) -> None:
    user = "grace"
    home = f"/home/{user}"
    lab_ssh(backend(lab, user), f"rm -rf {home}/Maildir")
    for node in MAIL_NODES:
        client = login(node_address(lab, node), "tls", "LOGIN", user, password_of(lab, user), lab)
        try:
            status, data = client.select("INBOX")
            assert status == "OK" and data == [b"0"], data
        finally:
            client.logout()
    stat = lab_ssh(backend(lab, user), f"stat -c '%U %a' {home}/Maildir").stdout.split()
    assert stat == [user, "700"]


# -- one backend per user -------------------------------------------------------------------


@pytest.mark.parametrize("user", USERS[:4])
def test_a_session_via_another_node_is_served_by_the_users_backend(lab, lab_ssh, user) -> None:
    home = backend(lab, user)
    other = next(n for n in MAIL_NODES if n != home)
    client = login(node_address(lab, other), "plain", "CRAM-MD5", user, password_of(lab, user), lab)
    try:
        client.select("INBOX")
        who_backend = lab_ssh(home, f"doveadm who -1 {user}").stdout
        who_proxy = lab_ssh(other, f"doveadm who -1 {user}", check=False).stdout
        # The backend serves the session for the client's own address (passed on by the
        # proxy as a trusted node); the proxy node runs no imap process for it.
        assert f"{user} " in who_backend and host_address(lab) in who_backend, who_backend
        assert f"{user} " not in who_proxy, who_proxy
    finally:
        client.logout()


def test_when_a_backend_is_down_its_users_get_unavailable_others_are_unaffected(
    lab, lab_ssh
) -> None:
    down, up = MAIL_NODES[1], MAIL_NODES[0]
    victim = next(u for u in USERS if backend(lab, u) == down)
    bystander = next(u for u in USERS if backend(lab, u) == up)
    lab_ssh(down, "systemctl stop dovecot")
    try:
        for mode, mechanism in (("plain", "CRAM-MD5"), ("tls", "LOGIN")):
            client = open_session(node_address(lab, up), mode, lab)
            # The proxy answers [UNAVAILABLE] once it gives up on the backend: after
            # proxy_timeout (mailcluster/passdb.py), longer than the usual client timeout.
            client.sock.settimeout(patience(PROXY_TIMEOUT_S + 10))
            message = refused(authenticate, client, mechanism, victim, password_of(lab, victim))
            assert "[UNAVAILABLE]" in message, message
            client.shutdown()
            ok = login(
                node_address(lab, up), mode, mechanism, bystander, password_of(lab, bystander), lab
            )
            ok.logout()
    finally:
        lab_ssh(down, "systemctl start dovecot")
        deadline = time.monotonic() + 30
        while lab_ssh(down, "doveadm who", check=False).returncode != 0:
            assert time.monotonic() < deadline, "dovecot did not come back"
            time.sleep(0.5)


# -- mailctl ------------------------------------------------------------------------------


def mailctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailcluster.mailctl", "-i", INVENTORY, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def test_mailctl_passwd_replaces_the_password_on_every_node_without_restart(lab, lab_ssh) -> None:
    user, old, new = "dave", password_of(lab, "dave"), "a-new-imap-password-42"
    pids = {n: lab_ssh(n, "systemctl show -p MainPID --value dovecot").stdout for n in MAIL_NODES}
    proc = mailctl("passwd", user, "--stdin", stdin=new + "\n")
    assert proc.returncode == 0, proc.stderr
    try:
        for node in MAIL_NODES:
            address = node_address(lab, node)
            for mode, mechanism in (("plain", "CRAM-MD5"), ("tls", "LOGIN")):
                login(address, mode, mechanism, user, new, lab).logout()
                result = attempt(lab, address, mode, mechanism, user, old)
                assert "AUTHENTICATIONFAILED" in result, result
        after = {
            n: lab_ssh(n, "systemctl show -p MainPID --value dovecot").stdout for n in MAIL_NODES
        }
        assert after == pids, "Dovecot was restarted"
    finally:
        assert mailctl("passwd", user, "--stdin", stdin=old + "\n").returncode == 0
    login(node_address(lab, MAIL_NODES[0]), "tls", "LOGIN", user, old, lab).logout()


def test_ten_mailctl_passwd_at_once_lose_no_change(lab) -> None:
    """Ten password changes for ten users at the same time (an operator and the
    registration page, say): every new password works on every node afterwards and no
    old one does. Without the store and push locks, one run's write or push replaced
    another's."""
    from concurrent.futures import ThreadPoolExecutor

    users = lab["bench_accounts"]["users"][:10]
    old = lab["bench_accounts"]["password"]
    new = {u: f"parallel-change-{i}-{u}" for i, u in enumerate(users)}

    def change(passwords: dict[str, str]) -> dict[str, str]:
        with ThreadPoolExecutor(len(passwords)) as pool:
            procs = pool.map(
                lambda u: mailctl("passwd", u, "--stdin", stdin=passwords[u] + "\n"), passwords
            )
            return {
                u: p.stderr[-500:]
                for u, p in zip(passwords, list(procs), strict=True)
                if p.returncode
            }

    try:
        assert change(new) == {}
        wrong: dict[tuple[str, str], str] = {}
        for node in MAIL_NODES:
            address = node_address(lab, node)
            for user in users:
                try:
                    login(address, "tls", "LOGIN", user, new[user], lab).logout()
                except imaplib.IMAP4.error as exc:
                    wrong[(node, user)] = f"new password refused: {exc}"
        # The old passwords, all at once: each failure waits out Dovecot's penalty.
        cases = [(n, u) for n in MAIL_NODES for u in users]
        with ThreadPoolExecutor(len(cases)) as pool:
            results = pool.map(
                lambda c: attempt(lab, node_address(lab, c[0]), "tls", "LOGIN", c[1], old), cases
            )
            for case, result in zip(cases, list(results), strict=True):
                if "AUTHENTICATIONFAILED" not in result:
                    wrong[case] = f"old password: {result}"
        assert wrong == {}
    finally:
        assert change(dict.fromkeys(users, old)) == {}
    for user in users:
        login(node_address(lab, MAIL_NODES[0]), "tls", "LOGIN", user, old, lab).logout()


def test_mailctl_refuses_a_password_on_the_command_line() -> None:
    proc = mailctl("passwd", "dave", "hunter2hunter2")
    assert proc.returncode == 2
    assert "never taken on the command line" in proc.stderr


def test_mailctl_refuses_a_too_short_password_and_changes_nothing(lab) -> None:
    proc = mailctl("passwd", "dave", "--stdin", stdin="short\n")
    assert proc.returncode == 2 and "too short" in proc.stderr
    login(
        node_address(lab, MAIL_NODES[0]), "tls", "LOGIN", "dave", password_of(lab, "dave"), lab
    ).logout()


def test_mailctl_lists_users_with_their_backends(lab) -> None:
    proc = mailctl("users")
    assert proc.returncode == 0, proc.stderr
    listed = dict(line.split("\t") for line in proc.stdout.splitlines())
    for user in USERS:
        assert listed[user] == backend(lab, user)
