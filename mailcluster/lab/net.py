"""The lab's bridge and its NAT: machines may reach the package mirror and DNS, nothing else."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from pathlib import Path

from mailcluster.lab import config, platforms
from mailcluster.lab.system import LabError, ok, run

# Ports the mirror serves apt on; DNS on both transports (TCP for large answers).
MIRROR_PORTS = (80, 443)
DNS_PORT = 53
# nspawn names a machine's host-side veth "vb-" + machine name (hashed past 15 chars).
VETH_PREFIX = f"vb-{config.PREFIX}"


def host_resolvers() -> list[str]:
    """The DNS resolvers this host uses: the only ones lab machines may ask."""
    servers = []
    for line in Path("/etc/resolv.conf").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            addr = ipaddress.ip_address(parts[1])
            if addr.version == 4 and not addr.is_loopback:
                servers.append(str(addr))
    if not servers:
        raise LabError("no non-loopback IPv4 nameserver in /etc/resolv.conf for the lab to use")
    return servers


def mirror_hosts() -> list[str]:
    """Host names of the package mirrors of every lab platform (the apt proxy serves these
    and no others)."""
    urls = platforms.all_mirror_urls()
    return sorted({re.sub(r"^https?://([^/:]+).*", r"\1", url) for url in urls})


def mirror_addresses() -> list[str]:
    """IPv4 addresses of the package mirror hosts (resolved now, pinned in the ruleset)."""
    addrs: set[str] = set()
    for name in mirror_hosts():
        try:
            infos = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise LabError(f"cannot resolve the package mirror {name}: {exc}") from None
        addrs.update(str(info[4][0]) for info in infos)
    return sorted(addrs)


def ruleset(mirrors: list[str], resolvers: list[str]) -> str:
    """The whole nft table, replaced atomically by `nft -f`."""
    lab = str(config.SUBNET)
    mirror_set = ", ".join(mirrors)
    dns_set = ", ".join(resolvers)
    ports = ", ".join(str(p) for p in MIRROR_PORTS)
    br = config.BRIDGE
    return f"""\
table inet {config.NFT_TABLE} {{
    set mirror4 {{ type ipv4_addr; elements = {{ {mirror_set} }} }}
    set dns4 {{ type ipv4_addr; elements = {{ {dns_set} }} }}

    # Traffic leaving the bridge for anywhere but the bridge: only the mirror and DNS.
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{br}" oifname "{br}" accept
        iifname "{br}" ip daddr @mirror4 tcp dport {{ {ports} }} accept
        iifname "{br}" ip daddr @dns4 udp dport {DNS_PORT} accept
        iifname "{br}" ip daddr @dns4 tcp dport {DNS_PORT} accept
        iifname "{br}" counter drop comment "lab egress: everything else"
        oifname "{br}" ct state established,related accept
        oifname "{br}" counter drop comment "lab ingress: only replies"
    }}

    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {lab} oifname != "{br}" masquerade
    }}
}}
"""


def up(mirrors: list[str], resolvers: list[str]) -> None:
    if not ok(["ip", "link", "show", config.BRIDGE]):
        run(["ip", "link", "add", config.BRIDGE, "type", "bridge"])
    addrs = run(["ip", "-j", "addr", "show", "dev", config.BRIDGE]).stdout
    for address in [str(config.GATEWAY), *config.CLIENT_ADDRESSES]:
        if f'"{address}"' not in addrs:
            run(["ip", "addr", "add", f"{address}/{config.SUBNET.prefixlen}", "dev", config.BRIDGE])
    run(["ip", "link", "set", config.BRIDGE, "up"])
    # Replace the table atomically: delete (if present) and create in one transaction.
    script = f"table inet {config.NFT_TABLE}\ndelete table inet {config.NFT_TABLE}\n"
    run(["nft", "-f", "-"], input=script + ruleset(mirrors, resolvers))
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")


def down() -> None:
    if ok(["nft", "list", "table", "inet", config.NFT_TABLE]):
        run(["nft", "delete", "table", "inet", config.NFT_TABLE])
    # Host-side veths of killed machines (before the bridge: found by their master).
    for link in json.loads(run(["ip", "-j", "link", "show"]).stdout):
        if link.get("master") == config.BRIDGE or link["ifname"].startswith(VETH_PREFIX):
            run(["ip", "link", "del", link["ifname"]], check=False)
    if ok(["ip", "link", "show", config.BRIDGE]):
        run(["ip", "link", "del", config.BRIDGE])


def live_ruleset() -> dict[str, object]:
    return json.loads(run(["nft", "-j", "list", "table", "inet", config.NFT_TABLE]).stdout)
