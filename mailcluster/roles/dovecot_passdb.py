"""Dovecot's passdb push (part of the Dovecot role, roles/dovecot.py, and run alone by
`mailctl passwd` through deploys/passdb.py): each mail node's own file (the model is
mailcluster/passdb.py), and users whose backend changes moved without ever being open
on two backends at once."""

from __future__ import annotations

import os
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import FileContents
from pyinfra.operations import files, server

from mailcluster import accounts, passdb
from mailcluster.ops import managed_file
from mailcluster.roles.dovecot_conf import CONF_DIR, PASSDB
from mailcluster.roles.dovecot_master import master_secret
from mailcluster.site import Site


def passdb_context(site: Site, node: str, moving: dict[str, str] | None = None) -> dict[str, Any]:
    master = master_secret(site.secrets_dir)
    return passdb.context(node, passdb.entries(site, node, master["password"], moving))


def live_backends(node: str, lines: list[str]) -> dict[str, str]:
    """user -> backend as ``node``'s live passdb has it (the map of the last deploy).

    Users left "moving" by a run that stopped mid-move keep the backend they moved from.
    """
    return passdb.last_backends(passdb.parse(lines, node))


def moving_users(site: Site, live: dict[str, str]) -> dict[str, str]:
    """Users whose backend changes in this run (a node added or draining): user -> old."""
    users = accounts.read_passwords(site.secrets_dir)
    return {u: old for u, old in live.items() if u in users and old != site.backend_of(u)}


def drain_sessions(users: list[str], timeout_s: int = 30) -> str:
    """Shell: end ``users``' IMAP sessions on this node (their old backend) and wait until
    Dovecot reports none; fail this host's run if they do not go."""
    names = " ".join(users)
    pattern = "|".join(users)
    return (
        f"for i in $(seq {timeout_s}); do "
        f'for u in {names}; do doveadm kick "$u" >/dev/null 2>&1; done; '
        f"left=$(doveadm who -1 2>/dev/null | awk 'NR > 1 && $1 ~ /^({pattern})$/ {{print $1}}'"
        " | sort -u | tr '\\n' ' '); "
        '[ -z "$left" ] && exit 0; sleep 1; done; '
        f'echo "sessions of $left on this node did not end in {timeout_s}s; '
        'run the deploy again" >&2; exit 1'
    )


@deploy("Dovecot passdb")
def push_passdb(moves: bool = True) -> None:
    """The node's passdb, replaced by rename (a login never sees a half-written file).
    Nothing to reload: Dovecot re-reads a passwd-file when its mtime changes.

    ``moves=False``: if users change backend, do nothing now; the Dovecot role calls this
    again after its reload, because a reload ends the logins that a move holds (they
    wait in the old login processes, which a reload stops: "Shutting down")."""
    site: Site = host.data.site
    files.directory(
        name="Dovecot's mailcluster folder", path=CONF_DIR, mode="750", user="root", group="dovecot"
    )
    # A user whose backend changes must never be open on two backends at once (Dovecot's
    # indexes on the shared home would be written by both): every node first holds their
    # logins (Dovecot's delay_until, passdb.MOVE_HOLD_S) and sends them to the new
    # backend only after the wait; meanwhile their old backend ends their sessions. No
    # login fails: it waits a few seconds. pyinfra runs each step on all hosts before the
    # next, so no node is a step ahead.
    moving = moving_users(site, live_backends(host.name, host.get_fact(FileContents, PASSDB) or []))
    if moving and os.environ.get("MAILCLUSTER_ROLLOUT"):
        raise DeployError(
            f"{host.name}: {len(moving)} users change backend (a mail node added or draining); "
            "that must reach every mail node at once: run the plain deploy, not a rollout"
        )
    if moving and not moves:
        return
    if moving:
        managed_file(
            name="Users changing backend: logins wait while their sessions end (passdb)",
            dest=PASSDB,
            template=passdb.TEMPLATE,
            context=passdb_context(site, host.name, moving),
            mode="640",
            group="dovecot",
            secret=True,
        )
        mine = sorted(u for u, old in moving.items() if old == host.name)
        if mine:
            server.shell(
                name="End their sessions on their old backend", commands=[drain_sessions(mine)]
            )
    managed_file(
        name="Users, password hashes and backends (passdb)",
        always=bool(moving),
        dest=PASSDB,
        template=passdb.TEMPLATE,
        context=passdb_context(site, host.name),
        mode="640",
        group="dovecot",
        secret=True,
        # Every line USER:{CRAM-MD5}<64 hex>:...; a malformed line locks a user out. The
        # failure names the bad lines by number only: they hold password hashes.
        validate=(
            "! grep -Evn '^(#|$|[a-z_][a-z0-9_.-]*:\\{{CRAM-MD5\\}}[0-9a-f]{{64}}:)' {path}"
            " | sed 's/:.*/: malformed line/' | grep ."
        ),
    )
