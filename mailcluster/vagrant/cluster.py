"""Bringing the Vagrant cluster up and down, and what it tells other tools (`info --json`,
the same shape as ``python -m mailcluster.lab info --json``)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import yaml

from mailcluster import accounts as accounts_mod
from mailcluster.lab import config as lab_config
from mailcluster.lab import pki
from mailcluster.lab.core import exercise_settings
from mailcluster.lab.machines import _ssh_ready
from mailcluster.lab.system import LabError, log, run, wait_until
from mailcluster.site import REPO_ROOT
from mailcluster.vagrant import box, config, host
from mailcluster.vagrant.topology import vms


def vagrant_env(topology: str) -> dict[str, str]:
    """The environment `vagrant` runs with: the topology, the boxes and the provider
    (defaults: the locally built boxes, Ubuntu 20.04 for mail nodes and Debian 12 for
    webmail hosts as in the lab, on libvirt)."""
    boxes = config.selected_boxes()
    return {
        "MAILCLUSTER_TOPOLOGY": topology,
        "MAILCLUSTER_BOX": boxes.box,
        "MAILCLUSTER_WEBMAIL_BOX": boxes.webmail_box,
        "MAILCLUSTER_PROVIDER": os.environ.get("MAILCLUSTER_PROVIDER", "libvirt"),
        "MAILCLUSTER_SUBNET": str(config.SUBNET.network_address).rsplit(".", 1)[0],
    }


def vagrant(topology: str, *args: str, check: bool = True, quiet: bool = False) -> str:
    """`vagrant ARGS` in the checkout; its output goes to our stderr as it comes (a TCG
    boot takes minutes) unless quiet, and is returned."""
    log("vagrant " + " ".join(args))
    proc = subprocess.Popen(
        ["vagrant", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **vagrant_env(topology)},
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if not quiet:
            sys.stderr.write(line)
            sys.stderr.flush()
    rc = proc.wait()
    if check and rc != 0:
        tail = "".join(lines[-25:]).rstrip()
        raise LabError(f"vagrant {' '.join(args)} failed ({rc}):\n{tail}")
    return "".join(lines)


# -- secrets (outside the checkout: the site schema refuses TLS paths into it) ----------


@contextlib.contextmanager
def _lab_pki_here() -> Iterator[None]:
    """mailcluster.lab.pki writes under lab config.SECRETS: point it at ours meanwhile."""
    saved = lab_config.SECRETS
    lab_config.SECRETS = config.SECRETS
    try:
        yield
    finally:
        lab_config.SECRETS = saved


def _secret_json(name: str, make: Any) -> Any:
    path = config.SECRETS / name
    if path.exists():
        return json.loads(path.read_text())
    config.SECRETS.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    return data


def accounts() -> list[dict[str, Any]]:
    """The test users (the lab's names and uids), passwords generated once and kept."""
    known = {
        a["user"]: a["password"]
        for a in _secret_json(
            "accounts.json",
            lambda: [{"user": u, "password": secrets.token_urlsafe(12)} for u in config.TEST_USERS],
        )
    }
    return [
        {"user": u, "password": known[u], "uid": config.FIRST_UID + i}
        for i, u in enumerate(config.TEST_USERS)
        if u in known
    ]


def bench_accounts() -> dict[str, Any]:
    data = _secret_json("bench.json", lambda: {"password": secrets.token_urlsafe(12)})
    users = [
        {"user": f"{lab_config.BENCH_PREFIX}{i:03d}", "uid": lab_config.BENCH_FIRST_UID + i}
        for i in range(lab_config.BENCH_USERS)
    ]
    return {"password": data["password"], "users": users}


def _users_script(users: list[dict[str, Any]]) -> str:
    """System accounts with the same uid/gid on every mail node; homes local to the VM
    (each user's mail is only ever written on their backend node)."""
    lines = [
        "set -e",
        "add() {",
        '  if ! getent passwd "$1" >/dev/null; then',
        '    echo "$1:x:$2:$2:$3:/home/$1:/bin/bash" >> /etc/passwd',
        '    echo "$1:x:$2:" >> /etc/group',
        '    echo "$1:!:20000:0:99999:7:::" >> /etc/shadow',
        "  fi",
        '  install -d -m 0700 -o "$2" -g "$2" "/home/$1"',
        "}",
    ]
    lines += [f"add {u['user']} {u['uid']} 'mailcluster test user'" for u in users]
    return "\n".join(lines) + "\n"


# -- SSH --------------------------------------------------------------------------------


def _identity_files(topology: str) -> dict[str, str]:
    """Each VM's private key, as `vagrant ssh-config` names it (root has the same key)."""
    out = vagrant(topology, "ssh-config", quiet=True)
    keys: dict[str, str] = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"\s*(Host|IdentityFile)\s+(.+)", line)
        if not m:
            continue
        if m.group(1) == "Host":
            current = m.group(2).strip()
        elif current and current not in keys:
            keys[current] = m.group(2).strip().strip('"')
    return keys


def _write_ssh(hosts: list[dict[str, Any]], keys: dict[str, str]) -> None:
    def keyscan(h: dict[str, Any]) -> str:
        def scanned() -> bool:
            return bool(run(["ssh-keyscan", "-t", "ed25519", h["address"]], check=False).stdout)

        wait_until(f"{h['name']} ({h['address']}) host key", scanned, 120, interval=2)
        line = run(["ssh-keyscan", "-t", "ed25519", h["address"]]).stdout.split()
        return f"{h['name']},{h['address']} {line[1]} {line[2]}\n"

    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        config.KNOWN_HOSTS.write_text("".join(pool.map(keyscan, hosts)))
    blocks = [
        f"Host {h['name']} {h['address']}\n"
        f"    HostName {h['address']}\n"
        "    User root\n"
        f"    IdentityFile {keys[h['name']]}\n"
        "    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {config.KNOWN_HOSTS}\n"
        "    StrictHostKeyChecking yes\n"
        "    ControlMaster auto\n"
        f"    ControlPath {config.STATE}/cm-%C\n"
        "    ControlPersist 60s\n"
        for h in hosts
    ]
    config.SSH_CONFIG.write_text(
        "# Written by python -m mailcluster.vagrant up.\n" + "\n".join(blocks)
    )


def ssh(name: str, command: str, input: str | None = None) -> str:
    return run(["ssh", "-F", config.SSH_CONFIG, name, command], input=input).stdout


# -- site -------------------------------------------------------------------------------


def _write_site(hosts: list[dict[str, Any]]) -> None:
    names = [f"{s}.{config.DOMAIN}" for s in ("imap", "smtp", "webmail")]
    names += [f"{h['name']}.{config.DOMAIN}" for h in hosts] + [h["name"] for h in hosts]
    with _lab_pki_here():
        key, cert = pki.ensure_leaf(names, [h["address"] for h in hosts])
        _, ca = pki.ensure_ca()
    site = {
        "domain": config.DOMAIN,
        "service_names": {s: f"{s}.{config.DOMAIN}" for s in ("imap", "smtp", "webmail")},
        "hosts": [{k: h[k] for k in ("name", "address", "groups")} for h in hosts],
        "ntp_servers": [str(config.GATEWAY)],
        "apt_proxy": host.apt_proxy_url(),
        "smarthost": f"{config.GATEWAY}::{config.SINK_PORT}",
        "unattended_upgrades": True,
        "tls": {"ca_cert": str(ca), "cert": str(cert), "key": str(key)},
        "secrets_dir": str(config.SECRETS / "site"),
        **exercise_settings(
            str(config.GATEWAY),
            config.CLIENT_ADDRESSES[0],
            config.SECRETS,
            accounts()[0]["password"],
        ),
    }
    header = "# Written by `python -m mailcluster.vagrant up`; regenerated on every up.\n"
    config.SITE_FILE.write_text(header + yaml.safe_dump(site, sort_keys=False))


# -- up / destroy -----------------------------------------------------------------------


def hosts_for(topology: str) -> list[dict[str, Any]]:
    """The topology's hosts on the Vagrantfile's addresses (.11, .12, ... in order), each
    with its box's platform when the box is built here (as the lab's state has them)."""
    keys = ("name", "address", "groups", "platform")
    return [{k: vm[k] for k in keys if k in vm} for vm in vms(topology)]


def up(topology: str) -> None:
    started = time.monotonic()
    host.check_libvirt()
    boxes = config.selected_boxes()
    for platform in boxes.built_here():  # the boxes made here (once) that the VMs boot
        box.ensure(platform)
    hosts = hosts_for(topology)
    config.STATE.mkdir(parents=True, exist_ok=True)
    config.STATE.chmod(0o700)
    host.ensure_pool()
    host.networks_up()
    host.nft_up()  # before any VM boots: nothing leaves but mirror and DNS
    host.start_services()
    users = accounts()
    bench = bench_accounts()
    bench_hash = accounts_mod.cram_md5_hash(bench["password"])
    passwords = accounts_mod.read_passwords(config.SECRETS / "site")
    for u in users:  # known test passwords, unless mailctl changed them since
        passwords.setdefault(u["user"], accounts_mod.cram_md5_hash(u["password"]))
    for u in bench["users"]:
        passwords.setdefault(u["user"], bench_hash)
    accounts_mod.write_passwords(config.SECRETS / "site", passwords)
    vagrant(topology, "up")
    keys = _identity_files(topology)
    _write_ssh(hosts, keys)
    script = _users_script(users + bench["users"])
    mail = [h for h in hosts if "mail" in h["groups"]]
    with ThreadPoolExecutor(max_workers=len(mail)) as pool:
        list(pool.map(lambda h: ssh(h["name"], "sh -s", input=script), mail))
    _write_site(hosts)
    state = {
        "target": "vagrant",
        "topology": topology,
        "platform": boxes.platform,
        "hosts": hosts,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    config.STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")
    log(f"vagrant cluster up: {len(hosts)} VMs ({topology}) in {time.monotonic() - started:.0f}s")


def destroy() -> None:
    """`vagrant destroy`, then the networks, the nft table, the host services. Secrets
    (CA, passwords) and the box stay, like the lab's."""
    state = load_state()
    topology = state["topology"] if state else os.environ.get("MAILCLUSTER_TOPOLOGY", "small")
    if shutil.which("vagrant"):
        vagrant(topology, "destroy", "-f")
    if shutil.which("virsh"):
        host.networks_down()
    host.nft_down()
    host.stop_services()
    config.STATE_FILE.unlink(missing_ok=True)
    for ctl in config.STATE.glob("cm-*"):
        ctl.unlink(missing_ok=True)
    log("vagrant cluster destroyed")


def load_state() -> dict[str, Any] | None:
    if not config.STATE_FILE.exists():
        return None
    state: dict[str, Any] = json.loads(config.STATE_FILE.read_text())
    return state


def info() -> dict[str, Any]:
    state = load_state()
    if state is None:
        raise LabError("the Vagrant cluster is not up; run: python -m mailcluster.vagrant up")
    hosts = state["hosts"]
    mail = [h for h in hosts if "mail" in h["groups"]]
    web = [h for h in hosts if "webmail" in h["groups"]]
    bench = bench_accounts()
    return {
        "target": "vagrant",
        "domain": config.DOMAIN,
        "topology": state["topology"],
        # The mail nodes' platform, as the lab's info has it (None: a box not built
        # here); each host's own is in hosts[].platform when known.
        "platform": state.get("platform"),
        "ca_cert": str(config.SECRETS / "tls" / "ca.pem"),
        "ssh_config": str(config.SSH_CONFIG),
        "site_file": str(config.SITE_FILE),
        "hosts": hosts,
        "endpoints": {
            "imap": mail[0]["address"],
            "smtp": mail[0]["address"],
            "webmail": f"https://{web[0]['address']}/",
        },
        "accounts": [{"user": a["user"], "password": a["password"]} for a in accounts()],
        "sink": str(config.SINK_DIR),
        "client_addresses": config.CLIENT_ADDRESSES,
        "bench_accounts": {
            "users": [u["user"] for u in bench["users"]],
            "password": bench["password"],
        },
        "sink_smtp": f"{config.GATEWAY}:{config.SINK_PORT}",
    }


def status() -> tuple[bool, str]:
    state = load_state()
    if state is None:
        return False, "down"
    lines = [f"topology {state['topology']} (vagrant)"]
    all_up = True
    for h in state["hosts"]:
        ready = _ssh_ready(h["address"])
        all_up &= ready
        lines.append(
            f"{h['name']:<12} {h['address']:<12} {','.join(h['groups']):<12} "
            f"{'up' if ready else 'DOWN'}"
        )
    return all_up, "\n".join(lines)
