"""Adding and removing a mail node (docs/RUNBOOK.md): only the users whose backend
changes move, their sessions on the old backend end before the new one serves them, and
every user sees every message through every node, before, during and after."""

from __future__ import annotations

import imaplib
import json
import time
from typing import Any

import pytest

from mailcluster import passdb
from mailcluster.accounts import backend_for
from mailcluster.roles.dovecot_conf import PASSDB
from tests.conftest import REPO, lab_cli, password_of, pyinfra
from tests.deploy.test_deploy import changed_operations
from tests.e2e.imap_client import login
from tests.e2e.login_prober import Prober, Probing
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


def session_times(lab_ssh, node: str, since: str, pattern: str) -> list[float]:  # noqa: ANN001
    """When ``node``'s Dovecot logged a line matching ``pattern`` (grep -E) since then."""
    out = lab_ssh(
        node,
        f"journalctl -u dovecot -o short-unix --since @{since} --no-pager | grep -E '{pattern}'",
        check=False,
    ).stdout
    return [float(line.split()[0]) for line in out.splitlines() if line.strip()]


def move_under_probes(
    lab: dict[str, Any],
    lab_ssh,  # noqa: ANN001
    mover: str,
    stayer: str,
    via: list[str],
    old: str,
    new: str,
) -> str:
    """Deploy while ``mover`` (moving from ``old`` to ``new``) and ``stayer`` log in again
    and again through every node in ``via`` (IMAPS and SMTP AUTH, 100 ms apart): no
    attempt may fail (the mover's logins wait while their sessions on ``old`` end), and
    ``new`` accepts no login of the mover before the last of its sessions on ``old`` has
    ended (the logs' own clocks; the lab's nodes keep time with chrony)."""
    probers = [Prober(lab, address(lab, n), u) for n in via for u in (mover, stayer)]
    since = lab_ssh(old, "date +%s").stdout.strip()
    # A copy of the old node's passdb as the move wrote it (polled every 50 ms).
    lab_ssh(
        old,
        "rm -f /root/moving.snap; nohup sh -c 'for i in $(seq 6000); do "
        f'if grep -q "^# moving: {mover} " {PASSDB}; then cp {PASSDB} /root/moving.snap; '
        "exit; fi; sleep 0.05; done' >/dev/null 2>&1 &",
    )
    with Probing(probers) as probing:
        out = deploy()
        # The clients go on until the move's hold is surely over, so that the new node
        # has served the mover (CI once: the deploy ended within the hold, the clients
        # stopped with it, and the new node had no login to compare with).
        time.sleep(passdb.MOVE_HOLD_S + 2)
    assert not probing.failures(), "\n".join(probing.failures()[:20])
    assert all(p.attempts > 5 for p in probers), [p.describe() for p in probers]
    snap = lab_ssh(old, "cat /root/moving.snap", check=False).stdout
    (moving,) = [e for e in passdb.parse(snap.splitlines(), old) if e.user == mover]
    # (Only its fields, never the line: it holds the proxy's master password.)
    hold, moved = moving.hold_until, (moving.moving_from, moving.backend)
    assert moved == (old, new), moved
    # Old: the ends of the mover's mailbox sessions ("imap(USER)<pid>", not proxy lines);
    # new: every login it accepted for the mover.
    last_old = session_times(lab_ssh, old, since, f"imap\\({mover}\\)<")
    first_new = session_times(lab_ssh, new, since, f"imap-login: Login: user=<{mover}>")
    assert last_old and first_new, (last_old, first_new)
    assert max(last_old) <= min(first_new) + 0.5, (max(last_old), min(first_new))
    # Logins looked up during the move waited until after the old node's sessions ended
    # (the move's wait outlasted the drain: without it the check above is luck).
    assert hold >= max(last_old), (hold, max(last_old))
    return out


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
    stayer = next(u for u in users if u not in moving)
    out = move_under_probes(lab, lab_ssh, mover, stayer, before, old, NEW)
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
    # This move has no certificate change (no reload): the session held on NEW lasts
    # until the move ends it, and the check below sees whether logins waited for that.
    move_under_probes(grown, lab_ssh, mover, stayer, after, NEW, old)
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
