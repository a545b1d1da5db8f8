"""How the deploy reloads Exim and Dovecot without failing a client: with
`mailcluster-reload exim4|dovecot` (templates/base/reload.sh.j2, installed by the base
role on every host). For the moment of a reload it holds new connections' SYNs to the
ports below (the client's kernel resends a SYN a second later: nobody is refused).

Found by tests/deploy/test_rolling_logins.py and tests/e2e/test_reload.py: a plain
reload refused SMTP connections while Exim re-executed, cut the IMAP logins being
handed to Dovecot's old imap processes (3 or 4 per reload at 10 logins/s), and failed an
SMTP AUTH with 435 while Dovecot re-created the auth socket Exim asks."""

from __future__ import annotations

from typing import Any

SCRIPT = "/usr/local/sbin/mailcluster-reload"
SMTP_PORTS = [25, 465, 587]
IMAP_PORTS = [143, 993]
# Dovecot's auth listener for Exim (dovecot.conf, group Debian-exim). Dovecot re-creates
# its unix listeners on every reload; for that moment connecting to it is refused.
EXIM_AUTH_SOCKET = "/run/dovecot/auth-exim"
# Whose SYNs wait while a daemon reloads: Dovecot's reload holds SMTP too, because
# Exim authenticates every SMTP AUTH (on any port) through Dovecot's socket.
HELD_PORTS = {"exim4": SMTP_PORTS, "dovecot": IMAP_PORTS + SMTP_PORTS}


def command(service: str) -> str:
    """The shell command the deploy's reload step runs."""
    if service not in HELD_PORTS:
        raise ValueError(f"mailcluster-reload knows no service {service!r}")
    return f"sh {SCRIPT} {service}"


def script_context() -> dict[str, Any]:
    """What templates/base/reload.sh.j2 is rendered with."""
    return {"services": HELD_PORTS, "auth_socket": EXIM_AUTH_SOCKET}
