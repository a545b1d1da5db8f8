"""Lab machines: an overlay of the base image per machine, booted by systemd-nspawn."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from mailcluster.lab import config
from mailcluster.lab.system import (
    LabError,
    kill_all,
    mounts_under,
    processes_under,
    run,
    wait_until,
)
from mailcluster.lab.topology import Machine

NETWORK_UNIT = """\
# Written by the mailcluster lab: this machine's static address on the lab bridge.
# (Sorts before systemd's 80-container-host0.network, which would use DHCP/link-local.)
[Match]
Name=host0

[Network]
Address={address}/{prefixlen}
Gateway={gateway}
LinkLocalAddressing=no
IPv6AcceptRA=no
"""


NOFILE = 1048576


def machine_dir(m: Machine) -> Path:
    return config.MACHINES / m.machine_name


def create(m: Machine, image: Path, authorized_key: str, users: list[dict[str, object]]) -> None:
    """Lay out the machine's root: overlay on the base image, then its own identity."""
    d = machine_dir(m)
    if d.exists():
        shutil.rmtree(d)
    for sub in ("upper", "work", "root"):
        (d / sub).mkdir(parents=True)
    run(
        [
            "mount",
            "-t",
            "overlay",
            f"{config.PREFIX}-{m.name}",
            "-o",
            f"lowerdir={image},upperdir={d / 'upper'},workdir={d / 'work'}",
            d / "root",
        ]
    )
    root = d / "root"
    (root / "etc/hostname").write_text(f"{m.name}\n")
    net = root / "etc/systemd/network/10-lab.network"
    net.parent.mkdir(parents=True, exist_ok=True)
    net.write_text(
        NETWORK_UNIT.format(
            address=m.address, prefixlen=config.SUBNET.prefixlen, gateway=config.GATEWAY
        )
    )
    ssh = root / "root/.ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh / "authorized_keys").write_text(authorized_key)
    (ssh / "authorized_keys").chmod(0o600)
    # No systemd user manager for root's SSH sessions: nothing in the lab uses one, and
    # on a host with hybrid cgroups it intermittently fails to start (219/CGROUP) when
    # the host is busy, a failed unit that is the host's, not the deploy's. Masked,
    # pam_systemd notes it and the session goes on.
    units = root / "etc/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    (units / "user@0.service").symlink_to("/dev/null")
    # Host keys of its own; the lab's known_hosts records them (StrictHostKeyChecking).
    for kind in ("ed25519", "ecdsa"):
        run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                kind,
                "-N",
                "",
                "-C",
                f"root@{m.name}",
                "-f",
                root / f"etc/ssh/ssh_host_{kind}_key",
            ]
        )
    if "mail" in m.groups:
        _add_users(root, users)


def _add_users(root: Path, users: list[dict[str, object]]) -> None:
    """Test users as system accounts with the same uid/gid on every mail node."""
    passwd, group, shadow = (root / "etc" / f for f in ("passwd", "group", "shadow"))
    with passwd.open("a") as p, group.open("a") as g, shadow.open("a") as s:
        for u in users:
            p.write(
                f"{u['user']}:x:{u['uid']}:{u['uid']}:lab test user:/home/{u['user']}:/bin/bash\n"
            )
            g.write(f"{u['user']}:x:{u['uid']}:\n")
            # '!': no login password; the IMAP password is a separate secret.
            s.write(f"{u['user']}:!:20000:0:99999:7:::\n")


def host_key_line(m: Machine) -> str:
    pub = (machine_dir(m) / "root/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    return f"{m.name},{m.address} {pub[0]} {pub[1]}\n"


# Every machine's systemd, journald and logind take inotify instances from one budget:
# the lab host's root user's. The kernel's default, 128, ran out at the 21st machine
# ("Failed to create control group inotify object: Too many open files"; an OS upgrade
# of the 20-host lab adds machines before it removes any). LXD's recommended value.
INOTIFY_INSTANCES = 1024
INOTIFY_SYSCTL = Path("/proc/sys/fs/inotify/max_user_instances")


def raise_host_limits() -> None:
    """Raise the lab host's inotify instance limit if it is lower than the lab needs."""
    if int(INOTIFY_SYSCTL.read_text()) < INOTIFY_INSTANCES:
        INOTIFY_SYSCTL.write_text(f"{INOTIFY_INSTANCES}\n")


def start(m: Machine) -> subprocess.Popen[bytes]:
    raise_host_limits()
    d = machine_dir(m)
    cmd = [
        "systemd-nspawn",
        "--boot",
        f"--machine={m.machine_name}",
        f"--directory={d / 'root'}",
        # No systemd/machined on the lab host: keep nspawn away from D-Bus.
        "--register=no",
        "--keep-unit",
        f"--network-bridge={config.BRIDGE}",
        "--resolv-conf=copy-host",
        # The deploy manages /etc/localtime (timezone is a site setting).
        "--timezone=off",
        "--link-journal=no",
        "--console=passive",
        # The machines' hard limit, as a VM's kernel would have it (nr_open): services
        # raise theirs within it (Dovecot's LimitNOFILE). Takes effect only where the lab
        # host has CAP_SYS_RESOURCE; otherwise the machines keep the host's hard limit.
        f"--rlimit=RLIMIT_NOFILE={NOFILE}",
    ]
    if "mail" in m.groups:
        cmd.append(f"--bind={config.HOMES}:/home")
    # A reboot inside the machine ends systemd-nspawn with status 133; boot it again, as
    # a VM's firmware would (the machine keeps its disk: the overlay's upper layer).
    supervised = 'while :; do "$@"; rc=$?; [ "$rc" -eq 133 ] || exit "$rc"; done'
    log = open(d / "nspawn.log", "ab")  # noqa: SIM115 -- handed to the child
    return subprocess.Popen(
        ["sh", "-c", supervised, f"{config.PREFIX}-machine", *cmd],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _ssh_ready(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=0.5) as s:
            s.settimeout(1)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def wait_booted(m: Machine, nspawn: subprocess.Popen[bytes]) -> None:
    def booted() -> bool:
        if nspawn.poll() is not None:
            raise LabError(f"systemd-nspawn for {m.name} exited ({nspawn.returncode})")
        return _ssh_ready(m.address)

    try:
        wait_until(f"{m.name} ({m.address}) to answer SSH", booted, config.BOOT_TIMEOUT_S)
    except LabError:
        tail = (machine_dir(m) / "nspawn.log").read_text(errors="replace")[-1500:]
        raise LabError(f"{m.name} did not boot; end of its log:\n{tail}") from None


def destroy_all() -> None:
    kill_all(processes_under(str(config.MACHINES)))
    wait_until("lab machines to exit", lambda: not processes_under(str(config.MACHINES)), 20)


def destroy(m: Machine) -> None:
    """Power one machine off (SIGKILL if it does not stop in time) and delete it."""
    d = machine_dir(m)
    marker = f"{d}/"
    subprocess.run(
        ["ssh", "-F", str(config.SSH_CONFIG), m.name, "systemctl poweroff"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    try:
        wait_until(f"{m.name} to power off", lambda: not processes_under(marker), 30)
    except LabError:
        kill_all(processes_under(marker))
        wait_until(f"{m.name} to exit", lambda: not processes_under(marker), 20)
    for point in mounts_under(d):
        if subprocess.run(["umount", point], check=False).returncode != 0:
            run(["umount", "-l", point])
    shutil.rmtree(d, ignore_errors=True)
