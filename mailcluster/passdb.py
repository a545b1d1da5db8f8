"""A mail node's Dovecot passdb: the one model of it, written and read back.

The deploy builds a node's lines with ``entries`` and renders them with
templates/dovecot/passdb.j2 (``context``); what a node's live file says is read back with
``parse``, into the same ``Entry`` lines: the users' backends as of the last deploy (the
role's moves) and the users a node serves itself (``mailctl drain``). The round trip,
render then parse, gives back the entries (tests/unit/test_passdb.py).

The format, a Dovecot passwd-file, a line per user, ``USER:HASH::::::EXTRA`` where EXTRA
is one of:

+ nothing: the node is the user's backend, they log in here;
+ ``proxy_maybe=y host=FQDN hostip=IP port=993 ssl=yes proxy_timeout=S master=M pass=P``:
  proxied to their backend (``proxy_timeout`` since d629e10; older files lack it);
+ after a comment ``# moving: USER from OLD to NEW``: the line for NEW (local or proxied)
  plus ``delay_until=T``: while their backend changes, a login waits in Dovecot's auth
  until T (MOVE_HOLD_S after the file was written) and then goes to NEW; meanwhile the
  role ends their sessions on OLD. So no login fails, and none reaches NEW while OLD
  still has the mailbox open. (Files written before 2026-12 refused them instead:
  ``nologin=y reason=...``; parse() reads both.)
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mailcluster import accounts, templating
from mailcluster.site import Site

TEMPLATE = "dovecot/passdb.j2"
# The account mail nodes use to open a proxied session on a user's backend (it is what
# lets CRAM-MD5 logins be proxied: the proxy never learns the user's password).
MASTER_USER = "mailcluster-proxy"
# How long a moving user's logins wait (Dovecot's delay_until, at most 5 minutes): longer
# than the deploy takes from writing the "moving" lines to ending the sessions on the old
# backend (pyinfra runs that step on every host first; the drain itself takes 1-2 s, and
# the whole window measured 2-4 s on the lab), well under what a mail client waits for a
# login (Thunderbird 100 s, the tests' clients 20 s).
MOVE_HOLD_S = 10

# How long a proxying node tries to reach a user's backend and log in there before the
# login fails with [UNAVAILABLE]. It must outlast a move's wait: a login looked up just
# before the "moving" lines were written is proxied to the old backend, which then holds
# it for up to MOVE_HOLD_S (with 10 s, such logins failed in tests/deploy/test_nodes.py);
# and a backend's reload hold (1-3 s). Dovecot's default, 30 s, is longer than clients
# wait (2.3.7 retries a refused connect every second until then, so a dead node's users
# waited the whole 30 s). One value for the whole file: not part of an entry.
PROXY_TIMEOUT_S = MOVE_HOLD_S + 10

_MOVING = re.compile(r"# moving: (\S+) from (\S+) to (\S+)$")


@dataclass(frozen=True)
class Entry:
    """One user's line of a node's passdb."""

    user: str
    hash: str  # {CRAM-MD5}<64 hex digits>
    # The node that holds the user's mailbox: for a user moving, the one they move to.
    # "" on a refused line that no "# moving:" comment explains (not the deploy's).
    backend: str
    moving_from: str = ""  # while moving: the backend they move from (logins wait)
    # while moving: logins wait until this UNIX time (0: from when the file is rendered;
    # a parsed old-style refused line has 0 too)
    hold_until: int = 0
    # Proxy fields, set when the line proxies the user to their backend (another node).
    backend_fqdn: str = ""
    backend_ip: str = ""
    master_user: str = ""
    master_password: str = ""

    @property
    def proxied(self) -> bool:
        return bool(self.backend_fqdn)

    @property
    def last_backend(self) -> str:
        """The backend as of the last deploy that finished: a move that has not yet
        finished (a run stopped mid-move) leaves the user on the one they move from."""
        return self.moving_from or self.backend


def entries(
    site: Site,
    node: str,
    master_password: str,
    moving: Mapping[str, str] | None = None,
) -> list[Entry]:
    """``node``'s passdb: a line per user with an IMAP password; users whose backend is
    another node are proxied there; users in ``moving`` (user -> old backend) too, but
    their logins wait (MOVE_HOLD_S from when the file is rendered).

    Each node gets its own file: Dovecot's proxy_maybe alone would compare the backend's
    port with the port the client used, and proxy a 143 client to its own node's 993.
    """
    out = []
    for user, hashed in sorted(accounts.read_passwords(site.secrets_dir).items()):
        backend = site.host(site.backend_of(user))
        moving_from = (moving or {}).get(user, "")
        if backend.name == node:
            out.append(Entry(user, hashed, backend.name, moving_from))
        else:
            out.append(
                Entry(
                    user,
                    hashed,
                    backend.name,
                    moving_from,
                    backend_fqdn=site.fqdn(backend.name),
                    backend_ip=str(backend.address),
                    master_user=MASTER_USER,
                    master_password=master_password,
                )
            )
    return out


def hold_until() -> int:
    """When moving users' logins may go on, if the file is written now."""
    return int(time.time()) + MOVE_HOLD_S


def context(node: str, lines: list[Entry]) -> dict[str, Any]:
    """What templates/dovecot/passdb.j2 is rendered with. The wait of moving users is
    counted from when the file is rendered (pyinfra renders it as the operation runs),
    unless an entry has its own (``hold_until``)."""
    return {
        "node": node,
        "entries": lines,
        "proxy_timeout": PROXY_TIMEOUT_S,
        "hold_until": hold_until,
    }


def render(node: str, lines: list[Entry]) -> str:
    return templating.render(TEMPLATE, **context(node, lines))


def parse(lines: Iterable[str], node: str) -> list[Entry]:
    """The entries of ``node``'s live passdb (its lines, as pyinfra's FileContents has
    them), in the file's order. A line without proxy fields and not refused: ``node``
    is the user's backend."""
    moves: dict[str, tuple[str, str]] = {}  # user -> (old, new), from "# moving:" lines
    out = []
    for line in lines:
        move = _MOVING.match(line)
        if move:
            moves[move[1]] = (move[2], move[3])
            continue
        if not line or line.startswith("#"):
            continue
        fields = line.split(":", 7)
        user, hashed = fields[0], fields[1] if len(fields) > 1 else ""
        extra = fields[7] if len(fields) == 8 else ""
        args = dict(kv.split("=", 1) for kv in extra.split() if "=" in kv)
        old, new = moves.get(user, ("", ""))
        hold = int(args.get("delay_until", "0").split("+", 1)[0] or 0) if old else 0
        if "host" in args:
            out.append(
                Entry(
                    user,
                    hashed,
                    args["host"].split(".", 1)[0],
                    old,
                    hold,
                    backend_fqdn=args["host"],
                    backend_ip=args.get("hostip", ""),
                    master_user=args.get("master", ""),
                    master_password=args.get("pass", ""),
                )
            )
        elif "nologin" in args:
            out.append(Entry(user, hashed, new, moving_from=old))
        else:
            out.append(Entry(user, hashed, node, old, hold))
    return out


def last_backends(lines: Iterable[Entry]) -> dict[str, str]:
    """user -> backend as of the last deploy that finished (see Entry.last_backend);
    a refused line that names no backend is left out."""
    return {e.user: e.last_backend for e in lines if e.last_backend}


def not_proxied(lines: Iterable[Entry]) -> list[str]:
    """The users a node does not hand on to another backend for good: the ones it serves
    itself, and any a stopped run left mid-move."""
    return [e.user for e in lines if not e.proxied or e.moving_from]
