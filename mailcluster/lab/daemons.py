"""Host-side services of the lab: package cache, NTP server, outbound-mail sink.

Each runs as a plain background process (the host may have no systemd), bound to the
bridge address only, with every path under /var/lib/mclab so `down` finds leftovers.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from mailcluster.lab import config
from mailcluster.lab.system import kill_all, processes_under, wait_until

CHRONY_CONF = """\
# Written by the mailcluster lab. Serves the host's clock to the lab machines.
# chronyd runs with -x: it never adjusts the host's clock, only serves it.
local stratum 10
allow {subnet}
bindaddress {gateway}
port {port}
cmdport 0
bindcmdaddress {run}/chronyd.sock
pidfile {run}/chronyd.pid
"""


ACNG_CONF = """\
# Written by the mailcluster lab. A plain caching proxy: no Remap- lines, so a package
# comes from exactly the mirror the machine asked for (Debian's stock remapping points
# at mirrors this host cannot reach). Every package is fetched once per lab host.
CacheDir: {cache}
LogDir: {run}/acng-log
PidFile: {run}/acng.pid
SocketPath: {run}/acng.socket
SupportDir: /usr/lib/apt-cacher-ng
Port: {port}
BindAddress: {gateway}
# IPv4 only: lab hosts may have IPv6 addresses without an IPv6 route out.
ConnectProto: v4
ExThreshold: 4
"""


def _listening(addr: str, port: int, proto: int = socket.SOCK_STREAM) -> bool:
    if proto != socket.SOCK_STREAM:
        return True
    try:
        with socket.create_connection((addr, port), timeout=0.5):
            return True
    except OSError:
        return False


def _spawn(name: str, cmd: list[str | Path]) -> None:
    config.RUN.mkdir(parents=True, exist_ok=True)
    log = open(config.RUN / f"{name}.log", "ab")  # noqa: SIM115 -- handed to the child
    subprocess.Popen(
        [str(c) for c in cmd],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # outlives this CLI; `down` ends it
    )


def apt_proxy_url() -> str:
    return f"http://{config.GATEWAY}:{config.APT_PROXY_PORT}"


def start_apt_proxy() -> None:
    gw = str(config.GATEWAY)
    if _listening(gw, config.APT_PROXY_PORT):
        return
    config.APT_CACHE.mkdir(parents=True, exist_ok=True)
    confdir = config.RUN / "acng-conf"
    (config.RUN / "acng-log").mkdir(parents=True, exist_ok=True)
    confdir.mkdir(parents=True, exist_ok=True)
    (confdir / "acng.conf").write_text(
        ACNG_CONF.format(
            cache=config.APT_CACHE, run=config.RUN, port=config.APT_PROXY_PORT, gateway=gw
        )
    )
    _spawn("apt-cacher-ng", ["/usr/sbin/apt-cacher-ng", "-c", confdir, "ForeGround=1"])
    wait_until("the lab's apt cache to listen", lambda: _listening(gw, config.APT_PROXY_PORT), 20)


def start_ntp() -> None:
    conf = config.RUN / "chrony.conf"
    config.RUN.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        CHRONY_CONF.format(
            subnet=config.SUBNET, gateway=config.GATEWAY, port=config.NTP_PORT, run=config.RUN
        )
    )
    if processes_under(str(conf)):
        return
    _spawn("chronyd", ["/usr/sbin/chronyd", "-d", "-x", "-u", "root", "-f", conf])


def start_sink() -> None:
    gw = str(config.GATEWAY)
    if _listening(gw, config.SINK_PORT):
        return
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
    wait_until("the lab's mail sink to listen", lambda: _listening(gw, config.SINK_PORT), 20)


def stop_all() -> None:
    kill_all(processes_under(str(config.RUN)))
