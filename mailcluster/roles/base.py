"""The base role, on every host: identity, clock, packages, SSH and security updates."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server, systemd

from mailcluster import platform, reloads
from mailcluster.ops import managed_file, service_action
from mailcluster.site import Host, Site

# What every host needs before any service role: time sync, zone data, security updates;
# nftables for the reload script (it holds new connections back while a daemon reloads).
BASE_PACKAGES = [
    "chrony",
    "tzdata",
    "unattended-upgrades",
    "ca-certificates",
    "openssh-server",
    "nftables",
    # arping: the host announces its address once (see announce_address).
    "iputils-arping",
]
# Where a host records that it announced its address (one file per address).
ANNOUNCED_DIR = "/var/lib/mailcluster/announced"


def announce_address(address: str) -> str:
    """Shell: tell the neighbours on ``address``'s network that it is this machine's now
    (three unsolicited ARP packets, 1 s apart), then record that it was done.

    A host that takes the address of one that is gone (a reinstalled or replaced host, a
    `mailctl upgrade` whose new node gets the old one's address, the lab's `add` after a
    `remove`) is unreachable from every peer whose ARP cache still holds the old machine's
    MAC, until that entry is re-resolved: 11 s measured on the lab (2026-12-01, a TCP
    connect from a node with such an entry; 4 ms after the announcement). A moved user's
    login proxied there would wait that on top of the move's hold (passdb.MOVE_HOLD_S),
    longer than the tests' clients wait (20 s). (It did not end the upgrade test's rare
    timed-out logins alone: one more came in a run with it, 2026-12-02; see
    upgrade.HELD_LOGINS_S.)"""
    return (
        f"a={address}; "
        "dev=$(ip -o -4 addr show | "
        'awk -v a="$a" \'{split($4, p, "/")} p[1] == a {print $2; exit}\'); '
        '[ -n "$dev" ] || { echo "$a is not an address of this host" >&2; exit 1; }; '
        'arping -q -U -c 3 -w 4 -I "$dev" "$a"; rc=$?; '
        # Sent is 0, or 1 for iputils before 2020 (Ubuntu 20.04's: "no replies", as none
        # is expected in this mode); 2 is an error (no such device, no such address).
        '[ "$rc" -le 1 ] || exit "$rc"; '
        f'mkdir -p {ANNOUNCED_DIR} && touch "{ANNOUNCED_DIR}/$a"'
    )


# A day: packages change rarely; a run within that reuses the index (and reports no change).
APT_CACHE_SECONDS = 86400


def service_aliases(site: Site, me: Host) -> tuple[str, list[str]] | None:
    """On a webmail host: its mail node's address and the IMAP and SMTP service names
    that RoundCube uses to reach it (Site.webmail_mail_node). None elsewhere."""
    if "webmail" not in me.groups or not site.in_group("mail"):
        return None
    node = site.webmail_mail_node(me.name)
    own = {f"{h.name}.{site.domain}" for h in site.hosts}
    names = [str(site.service_names["imap"]), str(site.service_names["smtp"])]
    names = [n for n in dict.fromkeys(names) if n not in own]
    return (str(node.address), names) if names else None


@deploy("Base system")
def base() -> None:
    site: Site = host.data.site
    plat = platform.current()
    me = site.host(host.name)

    # The proxy first: every apt call below goes through it.
    if site.apt_proxy:
        managed_file(
            name="Configure the apt proxy",
            dest="/etc/apt/apt.conf.d/01mailcluster-proxy",
            template="apt/01mailcluster-proxy.j2",
            context={"proxy": site.apt_proxy},
            comment="//",
        )
    else:
        files.file(
            name="No apt proxy", path="/etc/apt/apt.conf.d/01mailcluster-proxy", present=False
        )

    apt.packages(
        name="Install base packages",
        packages=BASE_PACKAGES,
        update=True,
        cache_time=APT_CACHE_SECONDS,
        no_recommends=True,
    )

    # -- identity ---------------------------------------------------------------------
    hostname = managed_file(
        name="Set the host name",
        dest="/etc/hostname",
        template="base/hostname.j2",
        context={"name": me.name},
    )
    server.shell(
        name="Apply the host name", commands=["hostname -F /etc/hostname"], _if=hostname.did_change
    )
    managed_file(
        name="Write /etc/hosts for the cluster",
        dest="/etc/hosts",
        template="base/hosts.j2",
        context={
            "me": me,
            "hosts": site.hosts,
            "domain": site.domain,
            "services": service_aliases(site, me),
        },
    )

    # Once per address: a new host's first deploy (before any user is moved to it).
    if host.get_fact(File, path=f"{ANNOUNCED_DIR}/{me.address}") is None:
        server.shell(
            name="Announce this host's address to its network (unsolicited ARP)",
            commands=[announce_address(str(me.address))],
        )

    managed_file(
        name="The reload without failed connections (mailcluster-reload)",
        dest=reloads.SCRIPT,
        template="base/reload.sh.j2",
        context=reloads.script_context(),
        mode="755",
        validate="sh -n {path}",
    )

    # -- clock ------------------------------------------------------------------------
    files.link(
        name=f"Set the time zone to {site.timezone}",
        path="/etc/localtime",
        target=f"/usr/share/zoneinfo/{site.timezone}",
    )
    # /etc/timezone is one bare line (no comments allowed): the one file without a banner.
    managed_file(
        name="Record the time zone",
        dest="/etc/timezone",
        banner=False,
        template="base/timezone.j2",
        context={"timezone": site.timezone},
    )

    chrony_conf = managed_file(
        name="Configure chrony",
        dest="/etc/chrony/chrony.conf",
        notify=["chrony.restart"],
        template="chrony/chrony.conf.j2",
        context={"servers": site.ntp_servers},
        validate=plat.chrony_check,
    )
    chrony_defaults = managed_file(
        name="Set chronyd's options",
        dest="/etc/default/chrony",
        notify=["chrony.restart"],
        template="chrony/default.j2",
        context={"in_container": plat.in_container, "seccomp": plat.chrony_seccomp},
    )
    chrony_unit = managed_file(
        name="chrony's unit for this platform",
        dest="/etc/systemd/system/chrony.service.d/mailcluster.conf",
        notify=["chrony.restart"],
        template="chrony/unit-override.conf.j2",
        context={"in_container": plat.in_container},
    )
    # chronyd has no config reload; a restart keeps its drift estimate (driftfile).
    service_action(
        "Restart chrony",
        "chrony",
        "restart",
        [chrony_conf, chrony_defaults, chrony_unit],
        command="systemctl daemon-reload && systemctl restart chrony",
    )
    systemd.service(name="Run chrony", service="chrony", running=True, enabled=True)

    # -- SSH: keys only ---------------------------------------------------------------
    sshd = managed_file(
        name="Allow SSH logins by key only",
        dest="/etc/ssh/sshd_config.d/10-mailcluster.conf",
        template="ssh/10-mailcluster.conf.j2",
        validate="sshd -t -f {path}",
        notify=["ssh.reload"],
    )
    service_action("Reload sshd", "ssh", "reload", [sshd])

    # -- security updates ---------------------------------------------------------------
    managed_file(
        name="Unattended security updates",
        dest="/etc/apt/apt.conf.d/20auto-upgrades",
        template="apt/20auto-upgrades.j2",
        context={"enabled": site.unattended_upgrades},
        comment="//",
    )
