"""Bringing the lab up and down, and what it tells other tools (`info --json`)."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from mailcluster import accounts as accounts_mod
from mailcluster import site as site_mod
from mailcluster import upgrade_plan, webmail_security
from mailcluster.lab import config, daemons, homes, image, machines, net, pki, platforms
from mailcluster.lab.system import (
    LabError,
    kill_all,
    log,
    mounts_under,
    ok,
    processes_under,
    run,
    wait_until,
)
from mailcluster.lab.topology import Machine
from mailcluster.lab.topology import machines as topology_machines


@contextmanager
def _locked() -> Iterator[None]:
    """One `up`/`down` at a time on this host, whichever checkout runs it."""
    config.VAR.mkdir(parents=True, exist_ok=True)
    with open(config.VAR / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


# -- secrets kept across down/up (the checkout's state folder) -------------------------


def _ssh_key() -> tuple[Path, str]:
    d = config.SECRETS / "ssh"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = d / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mailcluster-lab", "-f", key])
    return key, (d / "id_ed25519.pub").read_text()


def accounts() -> list[dict[str, Any]]:
    """Test users with their IMAP/SMTP passwords: generated once, kept across `up`s."""
    path = config.SECRETS / "accounts.json"
    known: dict[str, dict[str, Any]] = {}
    if path.exists():
        known = {a["user"]: a for a in json.loads(path.read_text())}
    out = []
    for i, user in enumerate(config.TEST_USERS):
        entry = known.get(user) or {"user": user, "password": secrets.token_urlsafe(12)}
        entry["uid"] = config.FIRST_UID + i
        out.append(entry)
    if [a for a in out if a["user"] not in known] or not path.exists():
        config.SECRETS.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        tmp.chmod(0o600)
        tmp.rename(path)
    return out


def bench_accounts() -> dict[str, Any]:
    """The benchmark users and their one password (generated once, kept)."""
    path = config.SECRETS / "bench.json"
    if path.exists():
        data = json.loads(path.read_text())
    else:
        data = {"password": secrets.token_urlsafe(12)}
        config.SECRETS.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
    users = [
        {"user": f"{config.BENCH_PREFIX}{i:03d}", "uid": config.BENCH_FIRST_UID + i}
        for i in range(config.BENCH_USERS)
    ]
    return {"password": data["password"], "users": users}


def _host_entries(ms: list[Machine], draining: set[str]) -> list[dict[str, Any]]:
    """The site file's host entries (the same schema production uses: no platform; the
    deploy reads each host's OS from the host itself)."""
    out = []
    for m in ms:
        entry: dict[str, Any] = {"name": m.name, "address": m.address, "groups": list(m.groups)}
        if m.name in draining:
            entry["draining"] = True
        out.append(entry)
    return out


def exercise_settings(
    gateway: str, first_client: str, secrets_dir: Path, check_password: str
) -> dict[str, Any]:
    """The site sections a test cluster (the lab, the Vagrant cluster) sets for its tests:
    brute-force limits short enough for a test to see a ban expire, and the rolling
    deploy's check account (its password written 0600 to ``secrets_dir``)."""
    path = secrets_dir / "rollout-check-password"
    if not path.exists() or path.read_text().strip() != check_password:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(check_password + "\n")
    return {
        # Homes on each machine's own disk: the lab's and Vagrant's kernels have no NFS.
        "home_filesystem": "local",
        # Never banned: the host's own address on the cluster's network (most tests, the
        # sink) and the first client address (the matrix tests' deliberate wrong
        # passwords); the brute-force test uses the others.
        "bruteforce": {
            "max_failures": 5,
            "window_s": 600,
            "ban_s": 45,
            "ignore": [f"{gateway}/32", f"{first_client}/32"],
        },
        # The small topology has 2 mail nodes: 25% makes batches of one node.
        "rollout": {
            "batch_percent": 25,
            "check_user": config.TEST_USERS[0],
            "check_password_file": str(path),
        },
    }


def _write_site(
    ms: list[Machine], key: Path, cert: Path, ca: Path, draining: set[str] | None = None
) -> None:
    """The lab's site configuration: the same schema production uses."""
    site = {
        "domain": config.DOMAIN,
        "service_names": {s: f"{s}.{config.DOMAIN}" for s in ("imap", "smtp", "webmail")},
        "hosts": _host_entries(ms, draining or set()),
        "ntp_servers": [str(config.GATEWAY)],
        "apt_proxy": daemons.apt_proxy_url(),
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
    header = (
        "# Written by `python -m mailcluster.lab up` (and add/drain/remove); "
        "regenerated on every up.\n"
    )
    unsafe = sorted(
        {m.platform for m in ms if "webmail" in m.groups}
        - {
            p
            for p in platforms.PLATFORMS
            if webmail_security.platform_has_fixes(platforms.get(p).distro, platforms.get(p).major)
        }
    )
    if unsafe:
        # Only when asked for (`up --webmail-platform`, `add --platform`): a lab that
        # tests RoundCube's old code path. Never the lab's default layout.
        site["webmail"] = {"allow_known_vulnerable_roundcube": True}
        header += (
            f"# WARNING: webmail hosts on {', '.join(unsafe)}, whose RoundCube has known "
            "exploited holes (mailcluster/webmail_security.py): installed anyway for tests.\n"
        )
    config.SITE_FILE.write_text(header + yaml.safe_dump(site, sort_keys=False))


# At boot, a unit may fail to attach to its cgroup on a lab host with hybrid cgroups
# (exit status 219/CGROUP): a race of the host, not of the machine. Such units are
# started again once the boot is over; any other failure stays for the tests to see.
_RETRY_CGROUP_FAILURES = (
    "systemctl is-system-running --wait >/dev/null 2>&1; "
    "for u in $(systemctl --failed --plain --no-legend | awk '{print $1}'); do "
    '[ "$(systemctl show -p ExecMainStatus --value "$u")" = 219 ] && '
    'systemctl reset-failed "$u" && systemctl start "$u"; done; true'
)


def _settle_boot(m: Machine) -> None:
    run(["ssh", "-F", config.SSH_CONFIG, m.name, _RETRY_CGROUP_FAILURES])


def _write_ssh_config(ms: list[Machine], key: Path) -> None:
    known = config.STATE / "known_hosts"
    known.write_text("".join(machines.host_key_line(m) for m in ms))
    blocks = [
        f"Host {m.name} {m.machine_name} {m.address}\n"
        f"    HostName {m.address}\n"
        "    User root\n"
        f"    IdentityFile {key}\n"
        "    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {known}\n"
        "    StrictHostKeyChecking yes\n"
        "    ControlMaster auto\n"
        f"    ControlPath {config.STATE}/cm-%C\n"
        "    ControlPersist 60s\n"
        for m in ms
    ]
    config.SSH_CONFIG.write_text("# Written by the mailcluster lab.\n" + "\n".join(blocks))


# -- state ------------------------------------------------------------------------------


def load_state() -> dict[str, Any] | None:
    if not config.STATE_FILE.exists():
        return None
    return json.loads(config.STATE_FILE.read_text())


OWNER_FILE = config.VAR / "owner.json"


def _owned(state: dict[str, Any]) -> bool:
    """Is the running lab the one this checkout's state describes (its keys, its CA)?"""
    try:
        return json.loads(OWNER_FILE.read_text()).get("lab_id") == state.get("lab_id")
    except (OSError, ValueError):
        return False


def _healthy(state: dict[str, Any] | None, topology: str) -> bool:
    if not state or state.get("topology") != topology or not _owned(state):
        return False
    ms = _machines_of(state)
    return (
        ok(["ip", "link", "show", config.BRIDGE])
        and ok(["nft", "list", "table", "inet", config.NFT_TABLE])
        and ok(["mountpoint", "-q", config.HOMES])
        and all(machines._ssh_ready(m.address) for m in ms)
    )


# -- up / down --------------------------------------------------------------------------


def up(topology: str, platform: str = platforms.DEFAULT, webmail: str | None = None) -> None:
    """Boot the topology, mail nodes on ``platform`` and webmail hosts on ``webmail``
    (default: ``platform`` where its RoundCube is safe, else the recommended fallback)."""
    platforms.get(platform)
    if webmail:
        platforms.get(webmail)
    ms = topology_machines(topology, platform, webmail)
    wanted = {m.name: m.platform for m in ms}
    with _locked():
        state = load_state()
        if state and _owned(state) and state.get("topology") == topology:
            # Machines powered off with `lab stop` boot again with their disks.
            for host in [h for h in state["hosts"] if h.get("off")]:
                _boot(next(m for m in _machines_of(state) if m.name == host["name"]))
                host.pop("off")
        if (
            state
            and _healthy(state, topology)
            and {m.name: m.platform for m in _machines_of(state)} == wanted
        ):
            daemons.start_apt_proxy(net.mirror_hosts())
            daemons.start_ntp()
            daemons.start_sink()
            _save(state, _machines_of(state), _ssh_key()[0])  # this checkout's site file
            log(f"lab already up ({topology}); nothing to do")
            return
        _down()  # whatever a killed run or another checkout left behind
        started = time.monotonic()
        config.STATE.mkdir(parents=True, exist_ok=True)
        config.STATE.chmod(0o700)
        resolvers = net.host_resolvers()
        net.up(net.mirror_addresses(), resolvers)
        daemons.start_apt_proxy(net.mirror_hosts())
        daemons.start_ntp()
        daemons.start_sink()
        bases = {
            name: image.ensure_base_image(platforms.get(name), daemons.apt_proxy_url())
            for name in sorted({m.platform for m in ms})
        }
        homes.up()
        users = accounts()
        for u in users:
            homes.add_user(u["user"], u["uid"], u["uid"])
        bench = bench_accounts()
        for u in bench["users"]:
            homes.add_plain_home(u["user"], u["uid"], u["uid"])
        # A fresh lab starts from the known test passwords (what `info` reports).
        bench_hash = accounts_mod.cram_md5_hash(bench["password"])
        accounts_mod.write_passwords(
            config.SECRETS / "site",
            {u["user"]: accounts_mod.cram_md5_hash(u["password"]) for u in users}
            | {u["user"]: bench_hash for u in bench["users"]},
        )
        users = users + bench["users"]
        # An OS upgrade's plan and failover marks describe the machines just destroyed: a
        # fresh lab that kept them would deploy towards nodes it does not have.
        for leftover in (upgrade_plan.PLAN_FILE, site_mod.FAILED_NODES_FILE):
            (config.SECRETS / "site" / leftover).unlink(missing_ok=True)
        key, pub = _ssh_key()
        tls_key, tls_cert = _leaf(ms)
        _, ca = pki.ensure_ca()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda m: machines.create(m, bases[m.platform], pub, users), ms))
        procs = [machines.start(m) for m in ms]
        with ThreadPoolExecutor(max_workers=len(ms)) as pool:
            list(pool.map(machines.wait_booted, ms, procs))
        _write_ssh_config(ms, key)
        with ThreadPoolExecutor(max_workers=len(ms)) as pool:
            list(pool.map(_settle_boot, ms))
        _write_site(ms, tls_key, tls_cert, ca)
        lab_id = secrets.token_hex(8)
        OWNER_FILE.write_text(json.dumps({"lab_id": lab_id, "state": str(config.STATE)}) + "\n")
        state = {
            "lab_id": lab_id,
            "topology": topology,
            "platform": platform,
            "hosts": _state_hosts(ms, set()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        config.STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")
        log(f"lab up: {len(ms)} machines ({topology}) in {time.monotonic() - started:.1f}s")


def _down() -> None:
    machines.destroy_all()
    daemons.stop_all()
    for point in mounts_under(config.VAR):
        if not ok(["umount", point]):
            run(["umount", "-l", point])
    net.down()
    if config.MACHINES.exists():
        shutil.rmtree(config.MACHINES)
    config.HOMES_IMAGE.unlink(missing_ok=True)
    if config.RUN.exists():
        shutil.rmtree(config.RUN)
    OWNER_FILE.unlink(missing_ok=True)
    config.STATE_FILE.unlink(missing_ok=True)
    for ctl in config.STATE.glob("cm-*"):
        ctl.unlink(missing_ok=True)


def down(purge: bool = False) -> None:
    with _locked():
        _down()
        if purge:
            shutil.rmtree(config.CACHE, ignore_errors=True)
            shutil.rmtree(config.STATE, ignore_errors=True)
    log("lab down" + (" (caches and state purged)" if purge else ""))


# -- one machine more or less (adding and removing a mail node, docs/RUNBOOK.md) --------


def _owned_state() -> dict[str, Any]:
    state = load_state()
    if state is None or not _owned(state):
        raise LabError("this checkout's lab is not up; run: python -m mailcluster.lab up")
    return state


def _machines_of(state: dict[str, Any]) -> list[Machine]:
    # A state file from before platforms were recorded describes Debian 12 machines.
    return [
        Machine(h["name"], h["address"], tuple(h["groups"]), h.get("platform", "debian12"))
        for h in state["hosts"]
    ]


def _state_hosts(ms: list[Machine], draining: set[str]) -> list[dict[str, Any]]:
    """state.json's (and `info`'s) hosts: the site's entries plus each one's platform."""
    return [
        entry | {"platform": m.platform}
        for m, entry in zip(ms, _host_entries(ms, draining), strict=True)
    ]


def _leaf(ms: list[Machine]) -> tuple[Path, Path]:
    names = [f"{s}.{config.DOMAIN}" for s in ("imap", "smtp", "webmail")]
    names += [f"{m.name}.{config.DOMAIN}" for m in ms] + [m.name for m in ms]
    return pki.ensure_leaf(names, [m.address for m in ms])


def _save(state: dict[str, Any], ms: list[Machine], key: Path) -> None:
    """Rewrite what describes the machines: ssh_config, the site file, state.json."""
    draining = {h["name"] for h in state["hosts"] if h.get("draining")}
    off = {h["name"] for h in state["hosts"] if h.get("off")}
    state["hosts"] = [
        h | ({"off": True} if h["name"] in off else {}) for h in _state_hosts(ms, draining)
    ]
    _write_ssh_config(ms, key)
    tls = config.SECRETS / "tls"
    _write_site(ms, tls / "privkey.pem", tls / "fullchain.pem", tls / "ca.pem", draining)
    config.STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")


def add(name: str, groups: list[str], platform: str | None = None) -> Machine:
    """Boot one more machine into the running lab and list it in the site file (what an
    operator does by adding a host to site.yaml). Its certificate names are added to the
    lab's leaf, so the next deploy rotates the certificate on every node. ``platform``:
    the lab's own unless given; one lab may mix platforms (an OS upgrade, node by node)."""
    from mailcluster.site import _host_name

    _host_name(name)
    with _locked():
        state = _owned_state()
        ms = _machines_of(state)
        if any(m.name == name for m in ms):
            raise LabError(f"{name}: already in the lab")
        used = {m.address for m in ms}
        free = (
            str(config.SUBNET.network_address + i)
            for i in range(config.FIRST_HOST, config.SUBNET.num_addresses - 1)
        )
        plat = platforms.get(platform or state.get("platform", "debian12"))
        m = Machine(name, next(a for a in free if a not in used), tuple(groups), plat.name)
        base = image.ensure_base_image(plat, daemons.apt_proxy_url())
        key, pub = _ssh_key()
        ms.append(m)
        _leaf(ms)
        machines.create(m, base, pub, accounts() + bench_accounts()["users"])
        machines.wait_booted(m, machines.start(m))
        _save(state, ms, key)
        _settle_boot(m)
    log(
        f"{name} ({m.address}, {m.platform}) added to the lab as {','.join(groups)}; "
        "deploy to configure it"
    )
    return m


def drain(name: str) -> None:
    """Mark a mail node as draining in the site file (no user's backend any more)."""
    with _locked():
        state = _owned_state()
        host = next((h for h in state["hosts"] if h["name"] == name), None)
        if host is None or "mail" not in host["groups"]:
            raise LabError(f"{name}: not a mail node of the lab")
        host["draining"] = True
        _save(state, _machines_of(state), _ssh_key()[0])
    log(f"{name} marked draining; deploy, then `mailctl drain {name}`, then remove it")


def remove(name: str, force: bool = False) -> None:
    """Power a machine off and delete it. A mail node must have been drained first (its
    queue empty, its users moved), unless ``force``: that is what a dead node is."""
    with _locked():
        state = _owned_state()
        host = next((h for h in state["hosts"] if h["name"] == name), None)
        if host is None:
            raise LabError(f"{name}: not in the lab")
        if "mail" in host["groups"] and not host.get("draining") and not force:
            raise LabError(
                f"{name}: a mail node is removed only after draining it (docs/RUNBOOK.md): "
                f"python -m mailcluster.lab drain {name}; make deploy; mailctl drain {name}"
            )
        ms = _machines_of(state)
        m = next(x for x in ms if x.name == name)
        machines.destroy(m)
        _save(state, [x for x in ms if x.name != name], _ssh_key()[0])
    log(f"{name} removed from the lab; deploy so the other hosts forget it")


def _host(state: dict[str, Any], name: str) -> tuple[dict[str, Any], Machine]:
    host = next((h for h in state["hosts"] if h["name"] == name), None)
    if host is None:
        raise LabError(f"{name}: not in the lab")
    return host, next(m for m in _machines_of(state) if m.name == name)


def _forget_ssh_connection(name: str) -> None:
    """Close the lab host's shared SSH connection to ``name`` (ControlMaster): after a
    power cut it would hang the next command until TCP gave up."""
    subprocess.run(
        ["ssh", "-F", str(config.SSH_CONFIG), "-O", "exit", name],
        capture_output=True,
        timeout=10,
        check=False,
    )


def stop(name: str) -> None:
    """Cut a machine's power: every process of it is killed at once (SIGKILL: no
    shutdown, no service stops, no goodbye on the network). Its disk is kept: what its
    processes had written is there when it boots again (`start`), as on a disk with a
    write cache that survives the cut. The site file still lists it: a dead node is the
    operator's to fail over (mailctl failover)."""
    with _locked():
        state = _owned_state()
        host, m = _host(state, name)
        marker = f"{machines.machine_dir(m)}/"
        pids = processes_under(marker)
        if not pids:
            log(f"{name} is already off")
        kill_all(pids)
        wait_until(f"{name} to be off", lambda: not processes_under(marker), 20)
        _forget_ssh_connection(name)
        host["off"] = True
        config.STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")
    log(f"{name} is off (power cut); its disk is kept: python -m mailcluster.lab start {name}")


def _boot(m: Machine) -> None:
    machines.wait_booted(m, machines.start(m))
    _settle_boot(m)


def start(name: str) -> None:
    """Boot a machine that `stop` powered off, with its disk as it was: its services
    start as they are enabled there, with the configuration it had (a node that comes
    back with its old map)."""
    with _locked():
        state = _owned_state()
        host, m = _host(state, name)
        if processes_under(f"{machines.machine_dir(m)}/"):
            log(f"{name} is already on")
        else:
            _forget_ssh_connection(name)
            _boot(m)
        host.pop("off", None)
        config.STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")
    log(f"{name} booted ({m.address})")


def leftovers() -> list[str]:
    """Machine-wide traces of a lab: what `down` must leave none of."""
    found = []
    if ok(["ip", "link", "show", config.BRIDGE]):
        found.append(f"bridge {config.BRIDGE}")
    if ok(["nft", "list", "table", "inet", config.NFT_TABLE]):
        found.append(f"nft table inet {config.NFT_TABLE}")
    found += [f"mount {p}" for p in mounts_under(config.VAR)]
    found += [f"process {pid}" for pid in processes_under(str(config.VAR))]
    if config.MACHINES.exists() and any(config.MACHINES.iterdir()):
        found.append(f"machine folders in {config.MACHINES}")
    return found


# -- info -------------------------------------------------------------------------------


def info() -> dict[str, Any]:
    state = load_state()
    if state is None:
        raise LabError("the lab is not up (no state in .lab/); run: python -m mailcluster.lab up")
    if not _owned(state):
        raise LabError(
            "the running lab was made by another checkout or run (its keys and CA differ); "
            "run: python -m mailcluster.lab up"
        )
    hosts = state["hosts"]
    mail = [h for h in hosts if "mail" in h["groups"]]
    web = [h for h in hosts if "webmail" in h["groups"]]
    return {
        "domain": config.DOMAIN,
        "topology": state["topology"],
        # The lab's platform (its mail nodes'); each host's own is in hosts[].platform.
        "platform": state.get("platform", "debian12"),
        "ca_cert": str(config.SECRETS / "tls" / "ca.pem"),
        "ssh_config": str(config.SSH_CONFIG),
        "site_file": str(config.SITE_FILE),
        "hosts": [h | {"platform": h.get("platform", "debian12")} for h in hosts],
        # Addresses, not names: the lab host has no DNS for the lab domain, and the
        # certificates carry every address as a subjectAltName, so TLS verifies.
        "endpoints": {
            "imap": mail[0]["address"],
            "smtp": mail[0]["address"],
            "webmail": f"https://{web[0]['address']}/",
        },
        "accounts": [{"user": a["user"], "password": a["password"]} for a in accounts()],
        "sink": str(config.SINK_DIR),
        # Other addresses of the lab host on the bridge, for tests that must come from
        # another client (failed logins are penalised per address).
        "client_addresses": config.CLIENT_ADDRESSES,
        # Many users for load tests (Dovecot limits sessions per user and address).
        "bench_accounts": {
            "users": [u["user"] for u in bench_accounts()["users"]],
            "password": bench_accounts()["password"],
        },
        "sink_smtp": f"{config.GATEWAY}:{config.SINK_PORT}",
    }


def status() -> tuple[bool, str]:
    state = load_state()
    if state is None:
        rest = leftovers()
        return False, "down" + (f" (leftovers: {', '.join(rest)})" if rest else "")
    if not _owned(state):
        return False, "down (this checkout's lab is gone; another run owns the machines)"
    lines = [f"topology {state['topology']}, platform {state.get('platform', 'debian12')}"]
    up_all = True
    for h in state["hosts"]:
        ready = machines._ssh_ready(h["address"])
        up_all &= ready
        word = "up" if ready else ("off (lab stop)" if h.get("off") else "DOWN")
        lines.append(
            f"{h['name']:<12} {h['address']:<12} {','.join(h['groups']):<12} "
            f"{h.get('platform', 'debian12'):<12} {word}"
        )
    return up_all, "\n".join(lines)
