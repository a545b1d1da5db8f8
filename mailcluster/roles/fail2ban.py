"""Brute-force protection (groups `mail` and `webmail`): fail2ban from the distribution.

Failed logins are read where the services already log them: Dovecot's auth service on
mail nodes (IMAP and SMTP AUTH alike: Exim authenticates through Dovecot) and RoundCube
on webmail nodes. An address over the site's limit is rejected by that host's service
ports (nftables) for the ban time; the cluster's own hosts are never banned.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, systemd

from mailcluster.ops import managed_file, service_action
from mailcluster.site import Site

# python3-systemd: the journal backend (Debian 12 logs to the journal only); nftables:
# the ban action (the distribution's package recommends it, and we install without).
PACKAGES = ["fail2ban", "python3-systemd", "nftables"]
JAIL = "/etc/fail2ban/jail.d/mailcluster.conf"
FILTERS = {"mail": "mailcluster-auth", "webmail": "mailcluster-webmail"}

# Compiles the filter's expressions (a sample line need not match). From a copy outside
# /etc/fail2ban: inside it, fail2ban-regex looks the filter up by its final name.
VALIDATE_FILTER = (
    'd=$(mktemp -d) && cp {path} "$d/filter.conf" && '
    'fail2ban-regex mailcluster "$d/filter.conf" >/dev/null; rc=$?; rm -rf "$d"; exit $rc'
)
# fail2ban reads every *.conf in jail.d: the candidate is tested in a copy of the whole
# configuration, under its final name, and the copy removed.
VALIDATE_JAIL = (
    'd=$(mktemp -d) && cp -a /etc/fail2ban/. "$d"/ && cp {path} "$d/jail.d/mailcluster.conf" '
    '&& fail2ban-client -c "$d" -t; rc=$?; rm -rf "$d"; exit $rc'
)


def jail_context(site: Site, node: str, groups: list[str]) -> dict[str, object]:
    ignore = [f"{h.address}/32" for h in site.hosts] + [str(n) for n in site.bruteforce.ignore]
    return {"node": node, "groups": groups, "bf": site.bruteforce, "ignore": ignore}


@deploy("Brute-force protection (fail2ban)")
def fail2ban() -> None:
    site: Site = host.data.site
    groups = [g for g in FILTERS if g in host.groups]
    apt.packages(name="Install fail2ban", packages=PACKAGES, no_recommends=True)
    changed = []
    for group in groups:
        name = FILTERS[group]
        changed.append(
            managed_file(
                name=f"Filter {name}",
                dest=f"/etc/fail2ban/filter.d/{name}.conf",
                template=f"fail2ban/{name}.conf.j2",
                validate=VALIDATE_FILTER,
                notify=["fail2ban.reload"],
            )
        )
    changed.append(
        managed_file(
            name="Jails and limits",
            dest=JAIL,
            template="fail2ban/jail.conf.j2",
            context=jail_context(site, host.name, groups),
            validate=VALIDATE_JAIL,
            notify=["fail2ban.reload"],
        )
    )
    systemd.service(name="Run fail2ban", service="fail2ban", running=True, enabled=True)
    # The unit is Type=simple: right after a start, `fail2ban-client reload` may come
    # before the server listens. Wait for it (it answers ping once its jails are up).
    service_action(
        "Reload fail2ban",
        "fail2ban",
        "reload",
        changed,
        command=(
            "timeout 120 sh -c 'until fail2ban-client ping >/dev/null 2>&1; do sleep 1; done'"
            " && systemctl reload fail2ban"
        ),
    )
