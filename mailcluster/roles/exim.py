"""The Exim role (group `mail`): SMTP on 25/587/465, SMTP-AUTH through Dovecot, delivery
into ~/Maildir (or procmail) on the recipient's backend, and no open relay."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.hardware import Cpus, Memory
from pyinfra.operations import apt, files, systemd

from mailcluster import accounts, reloads, sizing, tlsprofile
from mailcluster.ops import managed_file, service_action
from mailcluster.roles.tls import install_tls
from mailcluster.site import Site

PACKAGES = ["exim4-daemon-heavy", "procmail"]
CONF_DIR = "/etc/exim4/mailcluster"
BACKENDS = f"{CONF_DIR}/backends"
AUTH_SOCKET = reloads.EXIM_AUTH_SOCKET
# Debian's default is 30 minutes: a deferred hand-off between nodes (one reloading, one
# rebooting) would wait that long. Queue runs over an empty queue cost next to nothing.
QUEUE_INTERVAL = "2m"


def backends_context(site: Site, node: str) -> dict[str, object]:
    """Registered users and where their mailbox is: "local" on their backend, else the
    backend's name (this node hands it their mail)."""
    rows = []
    for user in sorted(accounts.read_passwords(site.secrets_dir)):
        backend = site.backend_of(user)
        rows.append((user, "local" if backend == node else site.fqdn(backend)))
    return {"node": node, "rows": rows}


def smarthost_route(smarthost: str | None) -> str | None:
    """Site form "host" or "host:port" -> Exim's route_list form "host::port"."""
    if not smarthost:
        return None
    host_part, _, port = smarthost.replace("::", ":").partition(":")
    return f"{host_part}::{port}" if port else host_part


@deploy("Exim (SMTP)")
def exim() -> None:
    site: Site = host.data.site
    me = site.host(host.name)
    limits = sizing.exim(host.get_fact(Cpus) or 1, int(host.get_fact(Memory) or 1024))

    apt.packages(name="Install Exim and procmail", packages=PACKAGES, no_recommends=True)
    # Replaced by the base role's mailcluster-reload (one script for Exim and Dovecot).
    files.file(
        name="No Exim-only reload script",
        path="/usr/local/sbin/mailcluster-exim-reload",
        present=False,
    )
    tls_ops = install_tls()

    push_backends()
    conf = managed_file(
        name="exim4.conf",
        dest="/etc/exim4/exim4.conf",
        template="exim4/exim4.conf.j2",
        context={
            "me": me,
            "fqdn": site.fqdn(me.name),
            "domain": site.domain,
            "mail_nodes": site.in_group("mail"),
            "smarthost": smarthost_route(site.smarthost),
            "tls": tlsprofile,
            "limits": limits,
            "auth_socket": AUTH_SOCKET,
            "sending": site.sending,
        },
        # -bV prints a long banner; on failure show only the error lines.
        validate=(
            "exim4 -bV -C {path} >/dev/null 2>&1 || "
            "{{ exim4 -bV -C {path} 2>&1 | grep -A3 -i error; exit 1; }}"
        ),
        notify=["exim4.reload"],
    )
    # Started at boot by its init script (the package enables it); systemd reports the
    # generated unit as never "enabled", so asking for that would change on every run.
    defaults = managed_file(
        name="Exim's daemon options (queue runs)",
        dest="/etc/default/exim4",
        template="exim4/default.j2",
        context={"queue_interval": QUEUE_INTERVAL},
        notify=["exim4.restart"],
    )
    systemd.service(name="Run Exim", service="exim4", running=True)
    # The queue interval is a daemon argument: a reload (re-exec) keeps the old one.
    service_action("Restart Exim (new daemon options)", "exim4", "restart", [defaults])
    # SIGHUP: the daemon re-executes itself with the new configuration; queued mail and
    # connections in progress are untouched, and new ones wait a moment instead of being
    # refused while it re-executes (mailcluster-reload holds their SYNs back).
    service_action(
        "Reload Exim", "exim4", "reload", [conf, *tls_ops], command=reloads.command("exim4")
    )


@deploy("Exim backends map")
def push_backends() -> None:
    site: Site = host.data.site
    files.directory(name="Exim's mailcluster folder", path=CONF_DIR, mode="755")
    managed_file(
        name="Where each user's mailbox lives (backends)",
        dest=BACKENDS,
        template="exim4/backends.j2",
        context=backends_context(site, host.name),
    )
