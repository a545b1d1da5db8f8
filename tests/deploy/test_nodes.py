"""Adding and removing a mail node (docs/RUNBOOK.md): only the users whose backend
changes move, their sessions on the old backend end before the new one serves them, and
every user sees every message through every node, before, during and after."""

from __future__ import annotations

import imaplib
import json
from typing import Any

import pytest

from mailcluster.accounts import backend_for
from tests.conftest import REPO, lab_cli, password_of, pyinfra
from tests.deploy.test_deploy import changed_operations
from tests.e2e.imap_client import login
from tests.e2e.test_delivery import send, wait_for

NEW = "mail03"


def info() -> dict[str, Any]:
    proc = lab_cli("info", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def deploy() -> str:
    proc = pyinfra("inventory/lab.py", "deploy.py")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def mailctl(*args: str) -> None:
    import subprocess
    import sys

    exe = [sys.executable, "-m", "mailcluster.mailctl", "-i", "inventory/lab.py", *args]
    proc = subprocess.run(exe, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def address(lab: dict[str, Any], name: str) -> str:
    return next(h["address"] for h in lab["hosts"] if h["name"] == name)


def mail_nodes(lab: dict[str, Any]) -> list[str]:
    return [h["name"] for h in lab["hosts"] if "mail" in h["groups"]]


def imap(lab: dict[str, Any], node: str, user: str) -> imaplib.IMAP4:
    client = login(address(lab, node), "tls", "LOGIN", user, password_of(lab, user), lab)
    client.select("INBOX", readonly=True)
    return client


def count(lab: dict[str, Any], node: str, user: str, msg_id: str) -> int:
    client = imap(lab, node, user)
    try:
        _, data = client.search(None, "HEADER", "Message-ID", msg_id)
        return len(data[0].split())
    finally:
        client.logout()


def every_user_sees_every_message(lab: dict[str, Any], seeded: dict[str, list[str]]) -> None:
    """Through every mail node, each seeded message exactly once."""
    for node in mail_nodes(lab):
        for user, ids in seeded.items():
            for msg_id in ids:
                assert count(lab, node, user, msg_id) == 1, (node, user, msg_id)


def sessions_on(lab_ssh, node: str) -> set[str]:  # noqa: ANN001
    out = lab_ssh(node, "doveadm who -1 | awk 'NR > 1 {print $1}'").stdout
    return set(out.split())


def alive(client: imaplib.IMAP4) -> bool:
    try:
        return client.noop()[0] == "OK"
    except (imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError):
        return False


@pytest.fixture
def restore_lab():
    """Whatever happens, the lab ends with its own mail nodes and a converged deploy."""
    yield
    if any(h["name"] == NEW for h in info()["hosts"]):
        lab_cli("remove", NEW, "--force")
    deploy()


def test_a_mail_node_is_added_and_removed_without_losing_or_splitting_a_mailbox(
    lab, lab_ssh, restore_lab
) -> None:
    users = [a["user"] for a in lab["accounts"]]
    before = mail_nodes(lab)
    after = [*before, NEW]
    moving = [u for u in users if backend_for(u, after) != backend_for(u, before)]
    # Rendezvous hashing: only users the new node wins move, and at least one does here.
    assert moving and all(backend_for(u, after) == NEW for u in moving)

    seeded = {u: [send(lab, before[0], u, "before the move")] for u in users}
    for u, ids in seeded.items():
        wait_for(lambda u=u, i=ids[0]: count(lab, before[0], u, i), f"{u}'s seed message")

    # Sessions of a moving user on its old backend: one direct, one proxied by a node.
    mover = moving[0]
    old = backend_for(mover, before)
    other = next(n for n in before if n != old)
    held = [imap(lab, old, mover), imap(lab, other, mover)]
    assert mover in sessions_on(lab_ssh, old)

    # -- add ---------------------------------------------------------------------------
    added = lab_cli("add", NEW, "--groups", "mail")
    assert added.returncode == 0, added.stderr
    out = deploy()
    assert "End their sessions on their old backend" in out
    grown = info()

    # The move ended the old backend's sessions before the new one took over.
    assert not any(alive(c) for c in held)
    assert mover not in sessions_on(lab_ssh, old)

    every_user_sees_every_message(grown, seeded)
    # The moved users are served by the new node, whichever node they connect to.
    for via in before:
        client = imap(grown, via, mover)
        try:
            assert mover in sessions_on(lab_ssh, NEW)
            assert mover not in sessions_on(lab_ssh, old)
        finally:
            client.logout()
    # Mail for a moved user now lands through the new node, and is read there.
    for u in moving:
        msg_id = send(grown, before[0], u, "after the move")
        seeded[u].append(msg_id)
        wait_for(lambda u=u, i=msg_id: count(grown, NEW, u, i), f"{u}'s mail via {NEW}")
        received = lab_ssh(NEW, f"grep -rlF -- '{msg_id}' /home/{u}/Maildir").stdout
        assert received.strip(), f"{msg_id} not in {u}'s Maildir as {NEW} sees it"
    # Converged: a second deploy changes nothing, and no index was found corrupted.
    assert changed_operations(deploy()) == 0
    for node in after:
        log = lab_ssh(node, "journalctl -u dovecot --no-pager | grep -ci corrupt", check=False)
        assert log.stdout.strip() == "0", f"{node}: Dovecot reported corrupted indexes"

    # -- remove ------------------------------------------------------------------------
    refused = lab_cli("remove", NEW)
    assert refused.returncode != 0 and "draining" in refused.stderr  # not before a drain
    held = [imap(grown, NEW, mover)]
    assert lab_cli("drain", NEW).returncode == 0
    deploy()
    assert not alive(held[0])  # its sessions on the draining node ended
    mailctl("drain", NEW)
    removed = lab_cli("remove", NEW)
    assert removed.returncode == 0, removed.stderr
    deploy()
    shrunk = info()
    assert mail_nodes(shrunk) == before
    every_user_sees_every_message(shrunk, seeded)
    for u in moving:
        client = imap(shrunk, other, u)
        try:
            assert u in sessions_on(lab_ssh, backend_for(u, before))
        finally:
            client.logout()
