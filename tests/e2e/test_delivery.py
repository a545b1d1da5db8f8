"""Delivery as SERVICE.md promises it: into ~/Maildir on the user's backend, exactly once,
whichever node accepted the message; procmail when ~/.procmailrc exists; the home quota
defers delivery without losing mail; a queued message survives an Exim restart."""

from __future__ import annotations

import email.parser
import smtplib
import subprocess
import sys
import time
import uuid
from email.message import EmailMessage
from typing import Any

import pytest

from tests.conftest import REPO, console_tail, lab_only, lab_state_hosts, password_of
from tests.conftest import backend_of as backend
from tests.conftest import node_address as address_of
from tests.e2e.imap_client import login

MAIL_NODES = [h["name"] for h in lab_state_hosts() if "mail" in h["groups"]] or ["(no lab)"]
DEADLINE = 60


def send(lab: dict[str, Any], node: str, user: str, subject: str = "probe") -> str:
    """Submit a message for ``user`` on ``node``'s port 25 (as the MX would receive it);
    returns its Message-ID."""
    msg_id = f"<probe-{uuid.uuid4().hex}@{lab['domain']}>"
    msg = EmailMessage()
    msg["From"] = "sender@example.org"
    msg["To"] = f"{user}@{lab['domain']}"
    msg["Subject"] = subject
    msg["Message-ID"] = msg_id
    msg.set_content(f"delivery probe via {node}\n")
    with smtplib.SMTP(address_of(lab, node), 25, timeout=30) as smtp:
        smtp.ehlo("client.example.org")
        refused = smtp.send_message(msg)
    assert refused == {}
    return msg_id


def files_with(lab_ssh, node: str, folder: str, msg_id: str) -> list[str]:  # noqa: ANN001
    out = lab_ssh(node, f"grep -rlF -- '{msg_id}' {folder} 2>/dev/null || true").stdout
    return out.split()


def wait_for(check, what: str, timeout: float = DEADLINE):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def imap_has(lab: dict[str, Any], node: str, user: str, msg_id: str, folder: str = "INBOX") -> int:
    client = login(address_of(lab, node), "tls", "LOGIN", user, password_of(lab, user), lab)
    try:
        client.select(folder, readonly=True)
        _, data = client.search(None, "HEADER", "Message-ID", msg_id)
        return len(data[0].split())
    finally:
        client.logout()


@pytest.mark.parametrize("via", MAIL_NODES)
@pytest.mark.parametrize("user", ["alice", "bob", "carol", "dave"])
def test_a_message_accepted_on_any_node_lands_once_in_the_backends_maildir(
    lab, lab_ssh, via: str, user: str
) -> None:
    home = backend(lab, user)
    msg_id = send(lab, via, user)
    found = wait_for(
        lambda: files_with(lab_ssh, home, f"/home/{user}/Maildir/new", msg_id),
        f"{msg_id} in {user}'s Maildir",
    )
    time.sleep(1)  # a duplicate would arrive right behind the first copy
    assert len(files_with(lab_ssh, home, f"/home/{user}/Maildir", msg_id)) == 1, found
    # Written on the backend: its Exim logged the local delivery of this message.
    log = lab_ssh(home, f"grep -F 'R=local_user' /var/log/exim4/mainlog | grep -F '{user}@'")
    assert log.stdout
    headers = email.parser.Parser().parsestr(lab_ssh(home, f"cat {found[0]}").stdout, True)
    received = " ".join(headers.get_all("Received") or [""])
    assert f"by {home}." in received.split(";")[0], received  # the last hop: the backend
    # Readable over IMAP through every node.
    for node in MAIL_NODES:
        assert imap_has(lab, node, user, msg_id) == 1


def test_maildir_is_created_at_first_delivery_owned_by_the_user_mode_0700(lab, lab_ssh) -> None:
    user = "frank"
    home = backend(lab, user)
    lab_ssh(home, f"rm -rf /home/{user}/Maildir")
    other = next(n for n in MAIL_NODES if n != home)
    msg_id = send(lab, other, user)
    wait_for(lambda: files_with(lab_ssh, home, f"/home/{user}/Maildir/new", msg_id), "delivery")
    stat = lab_ssh(home, f"stat -c '%U %a' /home/{user}/Maildir").stdout.split()
    assert stat == [user, "700"]


def test_procmail_runs_the_delivery_when_procmailrc_exists(lab, lab_ssh) -> None:
    user = "erin"
    home = backend(lab, user)
    rc = "MAILDIR=$HOME/Maildir/\nDEFAULT=$MAILDIR\n:0\n* ^Subject:.*procmail-probe\n.Filed/\n"
    lab_ssh(
        home, f"cat > /home/{user}/.procmailrc && chown {user}: /home/{user}/.procmailrc", input=rc
    )
    try:
        filed = send(lab, next(n for n in MAIL_NODES if n != home), user, "procmail-probe")
        plain = send(lab, home, user, "not filed")
        wait_for(
            lambda: files_with(lab_ssh, home, f"/home/{user}/Maildir/.Filed/new", filed),
            "procmail to file the message",
        )
        wait_for(
            lambda: files_with(lab_ssh, home, f"/home/{user}/Maildir/new", plain),
            "procmail's default delivery",
        )
        for node in MAIL_NODES:
            assert imap_has(lab, node, user, filed, folder="Filed") == 1
            assert imap_has(lab, node, user, filed) == 0
        log = lab_ssh(home, "grep -F 'T=procmail_pipe' /var/log/exim4/mainlog").stdout
        assert f"{user}@" in log
    finally:
        lab_ssh(home, f"rm -f /home/{user}/.procmailrc")


def lab_quota(user: str, size: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mailcluster.lab", "quota", user, size],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def queued(lab_ssh, node: str, msg_id: str) -> bool:  # noqa: ANN001
    ids = lab_ssh(node, "exim4 -bp | awk 'NF>=3 && $3 ~ /-/ {print $3}'").stdout.split()
    return any(msg_id in lab_ssh(node, f"exim4 -Mvh {i}", check=False).stdout for i in ids)


def reboot(lab_ssh, node: str) -> None:  # noqa: ANN001
    """Reboot a lab machine and wait until it is back with Exim running."""
    lab_ssh(node, "touch /run/before-reboot && (sleep 1; systemctl reboot) >/dev/null 2>&1 &")

    def back() -> bool:
        probe = lab_ssh(
            node, "test ! -e /run/before-reboot && systemctl is-active exim4", check=False
        )
        return probe.returncode == 0

    try:
        wait_for(back, f"{node} to reboot", timeout=120)
    except pytest.fail.Exception as e:
        # The machine's console (systemd's boot and shutdown messages) says what it
        # waits for: a stop job, a unit that failed, or nspawn that did not start again.
        raise AssertionError(f"{e}; end of {node}'s console:\n{console_tail(node)}") from None


@lab_only  # the home quota is the lab's btrfs qgroup, set by `mailcluster.lab quota`
def test_over_quota_defers_keeps_the_message_through_a_restart_then_delivers_once(
    lab, lab_ssh
) -> None:
    user = "heidi"
    home = backend(lab, user)
    other = next(n for n in MAIL_NODES if n != home)
    old = send(lab, home, user, "before quota")
    wait_for(lambda: files_with(lab_ssh, home, f"/home/{user}/Maildir/new", old), "old mail")
    assert imap_has(lab, other, user, old) == 1  # read once: the user's "old mail"
    lab_quota(user, "4K")  # below what the home already holds: over quota
    try:
        defers = f"grep -c -F ' == {user}@' /var/log/exim4/mainlog || true"
        before = int(lab_ssh(home, defers).stdout)
        msg_id = send(lab, other, user, "while over quota")  # accepted with 250: never lost
        wait_for(lambda: int(lab_ssh(home, defers).stdout) > before, "a deferred delivery")
        last = lab_ssh(home, f"grep -F ' == {user}@' /var/log/exim4/mainlog | tail -1").stdout
        assert "quota" in last.lower(), last
        assert queued(lab_ssh, home, msg_id)
        assert not files_with(lab_ssh, home, f"/home/{user}/Maildir", msg_id)
        # The user can still log in and read old mail.
        assert imap_has(lab, other, user, old) == 1
        # The queue is on disk: a restart loses nothing, nor does a reboot of the machine.
        lab_ssh(home, "systemctl restart exim4")
        assert queued(lab_ssh, home, msg_id)
        reboot(lab_ssh, home)
        assert queued(lab_ssh, home, msg_id)
    finally:
        lab_quota(user, "none")
    lab_ssh(home, "exim4 -qff")
    wait_for(
        lambda: files_with(lab_ssh, home, f"/home/{user}/Maildir/new", msg_id),
        "delivery after the quota was raised",
    )
    assert len(files_with(lab_ssh, home, f"/home/{user}/Maildir", msg_id)) == 1
    assert not queued(lab_ssh, home, msg_id)
