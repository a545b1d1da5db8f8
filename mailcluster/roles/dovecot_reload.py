"""When Dovecot restarts and when it reloads (part of the Dovecot role, roles/dovecot.py):
a restart only when a reload cannot do, and a reload that no login in progress notices."""

from __future__ import annotations

from pyinfra.api.operation import OperationMeta

from mailcluster import reloads
from mailcluster.ops import service_action


def restart(changed: list[OperationMeta]) -> None:
    # A restart only when a reload cannot do: a new rlimit needs a new master process.
    service_action(
        "Restart Dovecot (new limits)",
        "dovecot",
        "restart",
        changed,
        command="systemctl daemon-reload && systemctl restart dovecot",
    )


def reload(changed: list[OperationMeta]) -> None:
    # SIGHUP: sessions and logins in progress carry on; mailcluster-reload holds new
    # connections back and lets logins under way finish first (a login handed to an imap
    # process of the old configuration at the moment of the SIGHUP fails).
    service_action(
        "Reload Dovecot", "dovecot", "reload", changed, command=reloads.command("dovecot")
    )
