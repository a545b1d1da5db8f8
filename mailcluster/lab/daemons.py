"""Host-side services of the lab: package cache (nginx), NTP server, outbound-mail sink.

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


# A caching forward proxy for apt, limited to the package mirror. nginx rather than
# apt-cacher-ng: with twenty machines running `apt-get update` at once, apt-cacher-ng
# raced on the same index files ("Failure to move file ... out of the way") and left
# clients hanging; nginx's proxy_cache_lock collapses concurrent misses into one fetch.
APT_PROXY_CONF = """\
# Written by the mailcluster lab: the package cache for lab machines.
# One process, no workers: a killed run leaves no orphaned worker holding the port
# (a worker's command line names no lab path, so `down` could not find it).
master_process off;
pid {run}/apt-proxy.pid;
error_log {run}/apt-proxy-error.log warn;
events {{ worker_connections 1024; }}
http {{
    # Client, cache status (MISS = fetched from the mirror, HIT = served from the cache).
    log_format cache '$remote_addr $upstream_cache_status $status $host$uri';
    access_log {run}/apt-proxy-access.log cache;
    client_body_temp_path {run}/apt-proxy-tmp/body;
    proxy_temp_path {cache}/tmp;
    fastcgi_temp_path {run}/apt-proxy-tmp/fastcgi;
    uwsgi_temp_path {run}/apt-proxy-tmp/uwsgi;
    scgi_temp_path {run}/apt-proxy-tmp/scgi;
    proxy_cache_path {cache}/store levels=1:2 keys_zone=apt:16m max_size=20g inactive=60d
                     use_temp_path=on;
{upstreams}
    # Only the mirror: anything else asked of this proxy is refused.
    map $host $mirror {{
{map_lines}
        default "";
    }}
    server {{
        listen {gateway}:{port};
        proxy_cache apt;
        proxy_cache_key $host$uri;
        proxy_cache_lock on;
        proxy_cache_lock_timeout 300s;
        proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;
        proxy_http_version 1.1;
        proxy_set_header Host $host;
        proxy_set_header Connection "";
        # Packages and by-hash indexes never change under their name: keep them.
        location ~ (\\.deb$|/by-hash/) {{
            if ($mirror = "") {{ return 403; }}
            proxy_cache_valid 200 60d;
            proxy_pass http://$mirror;
        }}
        # Release files and plain indexes move: a minute is fresh enough for one lab run.
        location / {{
            if ($mirror = "") {{ return 403; }}
            proxy_cache_valid 200 1m;
            proxy_pass http://$mirror;
        }}
    }}
}}
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


def start_apt_proxy(mirror_hosts: list[str]) -> None:
    gw = str(config.GATEWAY)
    if _listening(gw, config.APT_PROXY_PORT):
        return
    for d in (config.APT_CACHE / "store", config.APT_CACHE / "tmp", config.RUN / "apt-proxy-tmp"):
        d.mkdir(parents=True, exist_ok=True)
    names = {h: "mirror_" + h.replace(".", "_").replace("-", "_") for h in mirror_hosts}
    upstreams = "".join(
        f"    upstream {u} {{ server {h}:80; keepalive 8; }}\n" for h, u in names.items()
    )
    map_lines = "\n".join(f"        {h} {u};" for h, u in names.items())
    conf = config.RUN / "apt-proxy.conf"
    conf.write_text(
        APT_PROXY_CONF.format(
            run=config.RUN,
            cache=config.APT_CACHE,
            gateway=gw,
            port=config.APT_PROXY_PORT,
            upstreams=upstreams,
            map_lines=map_lines,
        )
    )
    _spawn(
        "apt-proxy",
        [
            "/usr/sbin/nginx",
            "-c",
            conf,
            "-e",
            config.RUN / "apt-proxy-error.log",
            "-g",
            "daemon off;",
        ],
    )
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
