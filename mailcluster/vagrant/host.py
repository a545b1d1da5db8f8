"""The host side of the Vagrant cluster: libvirt networks, their NAT rule, host services.

Like the lab: VMs may reach only the package mirror (tcp 80/443) and DNS; everything
else leaving their networks is dropped (nft table ``inet mcvagrant``, removed at
destroy). Host services (package cache, NTP, outbound-mail sink) listen on the private
network's host address only.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from mailcluster.lab import daemons as lab_daemons
from mailcluster.lab import net as lab_net
from mailcluster.lab.system import LabError, kill_all, ok, processes_under, run, wait_until
from mailcluster.vagrant import config

VIRSH = ["virsh", "-c", "qemu:///system"]

# The private network: isolated (no <forward>: libvirt routes nothing off it), no DHCP
# (the Vagrantfile's addresses are static), the host at .1.
PRIVATE_XML = f"""\
<network>
  <name>{config.PRIVATE_NETWORK}</name>
  <bridge name='{config.PREFIX}0' stp='off'/>
  <ip address='{config.GATEWAY}' netmask='{config.SUBNET.netmask}'/>
</network>
"""

# The management network: vagrant-libvirt finds each VM here by its DHCP lease and SSHes
# in. NAT, restricted by the nft table below.
MGMT_XML = f"""\
<network>
  <name>{config.MGMT_NETWORK}</name>
  <forward mode='nat'/>
  <bridge name='{config.PREFIX}1' stp='off'/>
  <ip address='{config.MGMT_SUBNET.network_address + 1}' netmask='{config.MGMT_SUBNET.netmask}'>
    <dhcp>
      <range start='{config.MGMT_SUBNET.network_address + 2}'
             end='{config.MGMT_SUBNET.broadcast_address - 1}'/>
    </dhcp>
  </ip>
</network>
"""

POOL = "default"
POOL_DIR = "/var/lib/libvirt/images"


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([*VIRSH, *args], check=check)


def _active(*info: str) -> bool:
    """`virsh pool-info NAME` says State: running, `net-info NAME` Active: yes."""
    lines = virsh(*info).stdout.splitlines()
    return any(line.split()[:2] in (["Active:", "yes"], ["State:", "running"]) for line in lines)


def ensure_pool() -> None:
    """vagrant-libvirt keeps box images and VM disks in libvirt's `default` pool."""
    if not ok([*VIRSH, "pool-info", POOL]):
        Path(POOL_DIR).mkdir(parents=True, exist_ok=True)
        virsh("pool-define-as", POOL, "dir", "--target", POOL_DIR)
    if not _active("pool-info", POOL):
        virsh("pool-start", POOL)


def _ensure_network(name: str, xml: str) -> None:
    if not ok([*VIRSH, "net-info", name]):
        path = config.RUN / f"{name}.xml"
        path.write_text(xml)
        virsh("net-define", str(path))
    if not _active("net-info", name):
        virsh("net-start", name)


def networks_up() -> None:
    config.RUN.mkdir(parents=True, exist_ok=True)
    _ensure_network(config.PRIVATE_NETWORK, PRIVATE_XML)
    _ensure_network(config.MGMT_NETWORK, MGMT_XML)
    bridge = f"{config.PREFIX}0"
    have = run(["ip", "-j", "addr", "show", "dev", bridge]).stdout
    for address in config.CLIENT_ADDRESSES:  # other clients on the host (tests)
        if f'"{address}"' not in have:
            run(["ip", "addr", "add", f"{address}/{config.SUBNET.prefixlen}", "dev", bridge])


def networks_down() -> None:
    for name in (config.PRIVATE_NETWORK, config.MGMT_NETWORK):
        if ok([*VIRSH, "net-info", name]):
            virsh("net-destroy", name, check=False)
            virsh("net-undefine", name, check=False)


def ruleset(mirrors: list[str], resolvers: list[str]) -> str:
    nets = f"{config.SUBNET}, {config.MGMT_SUBNET}"
    ports = ", ".join(str(p) for p in lab_net.MIRROR_PORTS)
    return f"""\
table inet {config.NFT_TABLE} {{
    set mirror4 {{ type ipv4_addr; elements = {{ {", ".join(mirrors)} }} }}
    set dns4 {{ type ipv4_addr; elements = {{ {", ".join(resolvers)} }} }}
    set vms4 {{ type ipv4_addr; flags interval; elements = {{ {nets} }} }}

    # Forwarded traffic of the VMs' networks: only the mirror and DNS go out, only
    # replies come in. (A drop here is final, whatever libvirt's own rules accept.)
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ip saddr @vms4 ip daddr @vms4 accept
        ip saddr @vms4 ip daddr @mirror4 tcp dport {{ {ports} }} accept
        ip saddr @vms4 ip daddr @dns4 udp dport {lab_net.DNS_PORT} accept
        ip saddr @vms4 ip daddr @dns4 tcp dport {lab_net.DNS_PORT} accept
        ip saddr @vms4 counter drop comment "vagrant egress: everything else"
        ip daddr @vms4 ct state established,related accept
        ip daddr @vms4 counter drop comment "vagrant ingress: only replies"
    }}
}}
"""


def nft_up() -> None:
    script = f"table inet {config.NFT_TABLE}\ndelete table inet {config.NFT_TABLE}\n"
    rules = ruleset(lab_net.mirror_addresses(), lab_net.host_resolvers())
    run(["nft", "-f", "-"], input=script + rules)


def nft_down() -> None:
    if ok(["nft", "list", "table", "inet", config.NFT_TABLE]):
        run(["nft", "delete", "table", "inet", config.NFT_TABLE])


# -- host services on the private network's host address --------------------------------


def apt_proxy_url() -> str:
    return f"http://{config.GATEWAY}:{config.APT_PROXY_PORT}"


def _spawn(name: str, cmd: list[str | Path]) -> None:
    config.RUN.mkdir(parents=True, exist_ok=True)
    log = open(config.RUN / f"{name}.log", "ab")  # noqa: SIM115 -- handed to the child
    subprocess.Popen(
        [str(c) for c in cmd],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _listening(port: int) -> bool:
    return lab_daemons._listening(str(config.GATEWAY), port)


def start_services() -> None:
    gw = str(config.GATEWAY)
    if not _listening(config.APT_PROXY_PORT):
        for d in (
            config.APT_CACHE / "store",
            config.APT_CACHE / "tmp",
            config.RUN / "apt-proxy-tmp",
        ):
            d.mkdir(parents=True, exist_ok=True)
        hosts = lab_net.mirror_hosts()
        names = {h: "mirror_" + h.replace(".", "_").replace("-", "_") for h in hosts}
        upstreams = "".join(
            f"    upstream {u} {{ server {h}:80; keepalive 8; }}\n" for h, u in names.items()
        )
        conf = config.RUN / "apt-proxy.conf"
        conf.write_text(
            lab_daemons.APT_PROXY_CONF.format(
                run=config.RUN,
                cache=config.APT_CACHE,
                gateway=gw,
                port=config.APT_PROXY_PORT,
                upstreams=upstreams,
                map_lines="\n".join(f"        {h} {u};" for h, u in names.items()),
            )
        )
        err = config.RUN / "apt-proxy-error.log"
        _spawn("apt-proxy", ["/usr/sbin/nginx", "-c", conf, "-e", err, "-g", "daemon off;"])
        wait_until("the package cache to listen", lambda: _listening(config.APT_PROXY_PORT), 20)
    chrony = config.RUN / "chrony.conf"
    chrony.write_text(
        lab_daemons.CHRONY_CONF.format(
            subnet=config.SUBNET, gateway=gw, port=config.NTP_PORT, run=config.RUN
        )
    )
    if not processes_under(str(chrony)):
        _spawn("chronyd", ["/usr/sbin/chronyd", "-d", "-x", "-u", "root", "-f", chrony])
    if not _listening(config.SINK_PORT):
        config.SINK_DIR.mkdir(parents=True, exist_ok=True)
        _spawn(
            "sink",
            [
                sys.executable,
                "-m",
                "mailcluster.lab.sink",
                "--listen",
                f"{gw}:{config.SINK_PORT}",
                "--maildir",
                config.SINK_DIR,
                "--pidfile",
                config.RUN / "sink.pid",
            ],
        )
        wait_until("the mail sink to listen", lambda: _listening(config.SINK_PORT), 20)


def stop_services() -> None:
    pids = processes_under(str(config.RUN))
    kill_all(pids)


def libvirt_problem() -> str | None:
    """What is missing for the libvirt provider, in plain words (None: nothing)."""
    missing = [
        f"{tool} (package {package})"
        for tool, package in (
            ("vagrant", "vagrant"),
            ("virsh", "libvirt-clients"),
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("qemu-img", "qemu-utils"),
        )
        if not shutil.which(tool)
    ]
    if missing:
        return "missing commands: " + ", ".join(missing)
    plugins = run(["vagrant", "plugin", "list"], check=False).stdout
    if "vagrant-libvirt" not in plugins:
        return "Vagrant has no vagrant-libvirt plugin (Debian package vagrant-libvirt)"
    probe = run([*VIRSH, "version"], check=False)
    if probe.returncode != 0:
        return (
            "libvirtd does not answer on qemu:///system (start it: virtlogd -d; libvirtd -d): "
            + probe.stderr.strip()
        )
    return None


def check_libvirt() -> None:
    problem = libvirt_problem()
    if problem:
        raise LabError(problem)
