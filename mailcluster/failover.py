"""`mailctl failover NODE` and `mailctl rejoin NODE` (docs/RUNBOOK.md, "A mail node dies").

failover: NODE must not answer (SSH, IMAP), unless the operator says with ``force`` that
they fenced it (powered it off, cut its network). It is then marked failed on the
deploying machine (Site.failed_nodes) and every other mail node gets the map without
it: NODE's users are served by their next rendezvous choice, and mail queued for them
on the other nodes is sent again, now to their new backends. Nothing else changes:
other users' backends are the same, so their sessions and mail are untouched.

When NODE boots again it is fenced (roles/fencing.py) until a deploy brings its map in
line; `mailctl drain NODE` then delivers what its own queue held. rejoin: NODE is
backend again after the next deploy (its users move back, sessions drained first, as
when a node is added); or remove it from the site file instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from mailcluster import accounts
from mailcluster import site as site_mod

REPO = Path(__file__).resolve().parent.parent
PROBE_PORTS = {22: "SSH", 993: "IMAPS", 143: "IMAP"}
PROBE_TIMEOUT_S = 3


class FailoverError(Exception):
    pass


def answers(address: str) -> list[str]:
    """The services of ``address`` that accept a connection (a dead node has none)."""
    found = []
    for port, what in PROBE_PORTS.items():
        try:
            with socket.create_connection((address, port), timeout=PROBE_TIMEOUT_S):
                found.append(f"{what} (port {port})")
        except OSError:
            pass
    return found


def _write_failed(site: site_mod.Site, names: list[str]) -> None:
    path = site.secrets_dir / site_mod.FAILED_NODES_FILE
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("".join(f"{n}\n" for n in sorted(set(names))))
    os.replace(tmp, path)


def _mail_node(site: site_mod.Site, node: str) -> site_mod.Host:
    h = next((x for x in site.in_group("mail") if x.name == node), None)
    if h is None:
        raise FailoverError(f"{node}: not a mail node of the site")
    return h


def failover(inventory: str, site: site_mod.Site, node: str, force: bool = False) -> float:
    """Take ``node`` out of the map on every other mail node; returns the seconds taken."""
    started = time.monotonic()
    h = _mail_node(site, node)
    if node in site.failed_nodes():
        print(f"{node}: already failed over; pushing the map again", file=sys.stderr)
    alive = answers(str(h.address))
    if alive and not force:
        raise FailoverError(
            f"{node} still answers ({', '.join(alive)}): a node that answers may still "
            "write mailboxes. Fence it first (power it off, or cut its network), then run "
            "this again; --force says you have."
        )
    others = [n for n in site.backend_nodes() if n != node]
    if not others:
        raise FailoverError(f"{node}: no other mail node holds mail; nothing to fail over to")
    with accounts.locked(site.secrets_dir, "push"):
        _write_failed(site, [*site.failed_nodes(), node])
        moved = _push(inventory, node)
    took = time.monotonic() - started
    print(f"{node}: failed over in {took:.0f}s; {moved}")
    return took


def _push(inventory: str, node: str) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyinfra",
            "-y",
            inventory,
            "mailcluster/deploys/failover.py",
            "--limit",
            "mail",
            "--exclude",
            node,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise FailoverError(
            f"pushing the map without {node} failed (it is marked failed; run this again "
            f"or the deploy with --exclude {node}):\n{tail}"
        )
    return "every other mail node has the map without it"


def rejoin(site: site_mod.Site, node: str) -> None:
    """Clear ``node``'s failed mark: the next deploy makes it a backend again."""
    _mail_node(site, node)
    with accounts.locked(site.secrets_dir, "push"):
        failed = site.failed_nodes()
        if node not in failed:
            raise FailoverError(f"{node}: not failed over")
        _write_failed(site, [n for n in failed if n != node])
