"""Vagrant boxes for libvirt, built locally from debootstrap (no box download): one per
lab platform with a recipe here (``BOX_SPECS``: Ubuntu 20.04, production's OS, and
Debian 12), from the platform's archive, suite and components, debootstrap trusting only
the platform's pinned archive keys (``platforms.pinned_keyring``).

The disk is one whole-disk ext4 filesystem (this host's kernel makes no partition devices
for loop files), booted by GRUB installed with ``grub-install --force`` (block lists,
no embedding area) and a grub.cfg written here (``update-grub`` skips a loop-device
root). Inside: systemd-networkd (DHCP on eth0, which vagrant-libvirt needs to find the
VM; Vagrant's Debian guest plugin, which its Ubuntu guest uses too, writes networkd files
for the private network when the guest has no netplan), systemd-resolved, sshd with host
keys generated at first boot, the ``vagrant`` user with Vagrant's insecure key (replaced
by Vagrant at first ``up``) and passwordless sudo.

Built once per recipe into /var/cache/mcvagrant and registered with ``vagrant box add``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mailcluster.lab import config as lab_config
from mailcluster.lab import image as lab_image
from mailcluster.lab import platforms
from mailcluster.lab.platforms import LabPlatform
from mailcluster.lab.system import LabError, log, ok, run
from mailcluster.site import REPO_ROOT
from mailcluster.vagrant import config

RECIPE_VERSION = 2

# What a cloud VM image has: the lab's base packages plus udev and a kernel, a
# bootloader, and DNS from DHCP (systemd-resolved).
PACKAGES = [*lab_config.BASE_PACKAGES, "udev", "kmod", "e2fsprogs"]
BOOT_PACKAGES = ["grub-pc", "initramfs-tools"]


@dataclass(frozen=True)
class BoxSpec:
    """What differs between the platforms' boxes."""

    platform: str  # mailcluster/lab/platforms.py's name
    # Debootstrapped with the base packages.
    extra_packages: tuple[str, ...]
    # Installed afterwards with GRUB and initramfs-tools: a small kernel built for
    # virtio guests (disk, NIC, serial console built in, not modules).
    kernel: tuple[str, ...]
    grub_title: str

    @property
    def lab_platform(self) -> LabPlatform:
        return platforms.get(self.platform)

    @property
    def box_name(self) -> str:
        return config.BOX_NAMES[self.platform]

    @property
    def short_name(self) -> str:  # the box's host name and file name: "ubuntu2004"
        return self.box_name.rsplit("/", 1)[1]


BOX_SPECS = {
    s.platform: s
    for s in (
        # Ubuntu 20.04: resolved is part of the systemd package. The kernel: linux-kvm,
        # Ubuntu's flavour for KVM/qemu guests (virtio block, net and PCI, ext4, 8250
        # serial console built in; nf_tables as modules, which the deploy's nftables
        # needs); it boots under plain qemu emulation (TCG) too. No netplan (minbase has
        # none): Vagrant's Ubuntu guest then configures the private network with
        # systemd-networkd files, as for Debian.
        BoxSpec("ubuntu20.04", (), ("linux-image-kvm",), "Ubuntu"),
        # Debian 12: resolved is its own package. The cloud kernel: virtio built in,
        # small initrd.
        BoxSpec(
            "debian12", ("systemd-resolved",), ("linux-image-cloud-amd64",), "Debian GNU/Linux"
        ),
    )
}
assert set(BOX_SPECS) == set(config.BOX_NAMES), "a box name without a recipe, or the reverse"


def spec(platform: str) -> BoxSpec:
    try:
        return BOX_SPECS[platform]
    except KeyError:
        raise LabError(
            f"no Vagrant box recipe for platform {platform!r} (recipes: {', '.join(BOX_SPECS)})"
        ) from None


NETWORK_UNIT = """\
# Written by mailcluster's Vagrant box: the first NIC (libvirt's management network)
# by DHCP; Vagrant configures the private network's NIC itself.
[Match]
Name=eth0

[Network]
DHCP=ipv4
"""

# Debian's ssh.service checks its config (sshd -t) before starting, which fails without
# host keys: generate them first (each VM gets its own at first boot).
SSH_DROPIN = """\
# Written by mailcluster's Vagrant box: host keys are made at first boot, before the
# config check that would fail without them.
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
"""

GRUB_CFG = """\
# Written by mailcluster's Vagrant box build (update-grub skips a loop-device root).
# update-grub inside the VM replaces this file with its own.
set timeout=1
insmod ext2
search --no-floppy --fs-uuid --set=root {uuid}
menuentry "{title}" {{
    linux /vmlinuz root=UUID={uuid} ro console=ttyS0,115200 net.ifnames=0 biosdevname=0 quiet
    initrd /initrd.img
}}
"""

# For update-grub in the VM (a kernel upgrade runs it): the same console and NIC names
# (eth0: the networkd unit above) as the box's own grub.cfg, and GRUB in text mode on the
# serial line. Seen on Ubuntu 20.04 under TCG after a stock update-grub: the VM rebooted
# with NICs named ens5, ens6 (no DHCP: unreachable), and once hung in the BIOS before the
# kernel (a graphical terminal, and the VMs have no video device).
GRUB_DEFAULTS = """\
# Written by mailcluster's Vagrant box build: update-grub keeps the box's serial console
# and NIC names (eth0, which systemd-networkd's unit matches); no graphics (no video
# device in the VM).
GRUB_TIMEOUT=1
GRUB_TIMEOUT_STYLE=menu
GRUB_RECORDFAIL_TIMEOUT=5
GRUB_TERMINAL="serial console"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_GFXPAYLOAD_LINUX=text
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX="console=ttyS0,115200 net.ifnames=0 biosdevname=0"
"""

BOX_VAGRANTFILE = """\
# Written by mailcluster's Vagrant box build.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
    libvirt.nic_model_type = "virtio"
  end
end
"""


def vagrant_insecure_key() -> str:
    """Vagrant's well-known public key, as shipped with this host's Vagrant."""
    proc = run(["gem", "contents", "vagrant"], check=False)
    candidates = [Path(p) for p in proc.stdout.split() if p.endswith("/keys/vagrant.pub")]
    candidates += sorted(
        Path("/usr/share/rubygems-integration/all/gems").glob("vagrant-*/keys/vagrant.pub")
    )
    candidates += sorted(Path("/opt/vagrant/embedded/gems").glob("**/keys/vagrant.pub"))
    for path in candidates:
        if path.exists():
            return path.read_text()
    raise LabError(
        "cannot find Vagrant's insecure public key (keys/vagrant.pub); is vagrant installed?"
    )


def packages(s: BoxSpec) -> list[str]:
    return sorted({*PACKAGES, *s.extra_packages})


def kernel_packages(s: BoxSpec) -> list[str]:
    return [*s.kernel, *BOOT_PACKAGES]


def recipe(s: BoxSpec) -> dict[str, object]:
    p = s.lab_platform
    return {
        "version": RECIPE_VERSION,
        "platform": p.name,
        "suite": p.suite,
        "mirror": p.mirror,
        "components": list(p.components),
        "keys": list(p.keys),
        "packages": packages(s),
        "kernel": kernel_packages(s),
        "grub_title": s.grub_title,
        "disk_gb": config.BOX_DISK_GB,
        "files": hashlib.sha256(
            (NETWORK_UNIT + SSH_DROPIN + GRUB_CFG + GRUB_DEFAULTS + BOX_VAGRANTFILE).encode()
        ).hexdigest(),
    }


def box_file(s: BoxSpec) -> Path:
    digest = hashlib.sha256(json.dumps(recipe(s), sort_keys=True).encode()).hexdigest()[:12]
    return config.CACHE / f"{s.short_name}-libvirt-{digest}.box"


@contextlib.contextmanager
def _mounted_disk(raw: Path, mnt: Path) -> Iterator[str]:
    loop = run(["losetup", "--find", "--show", raw]).stdout.strip()
    binds: list[Path] = []
    try:
        mnt.mkdir(parents=True, exist_ok=True)
        run(["mount", loop, mnt])
        try:
            yield loop
        finally:
            for b in reversed(binds):
                run(["umount", "-l", b], check=False)
            for sub in ("dev/pts", "dev", "proc", "sys"):
                if ok(["mountpoint", "-q", mnt / sub]):
                    run(["umount", "-l", mnt / sub], check=False)
            run(["umount", mnt])
    finally:
        run(["losetup", "-d", loop], check=False)


def _bind_system(root: Path) -> None:
    for sub in ("dev", "dev/pts", "proc", "sys"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        if not ok(["mountpoint", "-q", root / sub]):
            run(["mount", "--bind", f"/{sub}", root / sub])


def _chroot(root: Path, *cmd: str, input: str | None = None) -> None:
    run(
        ["chroot", root, *cmd],
        input=input,
        env={"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8"},
    )


def build(platform: str = config.DEFAULT_PLATFORM) -> Path:
    """Build the platform's box file for the current recipe (or return the cached one).

    The build runs in a mount namespace of its own (``unshare``; ``main`` below): a mount
    namespace made meanwhile by another program (the lab's machines get one each) would
    otherwise hold a copy of the disk's mount, so that `umount` here did not write the
    file system out (seen: a Debian 12 box whose disk, as GRUB reads it, had no kernel
    and no grub.cfg until its journal was replayed)."""
    s = spec(platform)
    final = box_file(s)
    if final.exists():
        return final
    cmd = ["unshare", "--mount", "--propagation", "private"]
    cmd += [sys.executable, "-m", "mailcluster.vagrant.box", platform]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0 or not final.exists():
        raise LabError(f"building the {platform} box failed (exit {proc.returncode}; see above)")
    return final


def _build(s: BoxSpec) -> Path:
    p = s.lab_platform
    final = box_file(s)
    work = config.CACHE / f"box-build-{s.short_name}"
    if work.exists():  # a killed build: start over
        for line in Path("/proc/self/mounts").read_text().splitlines():
            point = line.split()[1]
            if point.startswith(str(work)):
                run(["umount", "-l", point], check=False)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    log(f"building the {p.distro} {p.version} box {final.name} (once per recipe; minutes)")
    keyring = platforms.pinned_keyring(p, config.CACHE / "keyrings" / f"{p.name}.gpg")
    raw = work / "disk.raw"
    run(["truncate", "-s", f"{config.BOX_DISK_GB}G", raw])
    fs_uuid = str(uuid.uuid4())
    run(["mkfs.ext4", "-q", "-F", "-L", "root", "-U", fs_uuid, raw])
    mnt = work / "root"
    with _mounted_disk(raw, mnt) as loop:
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--keyring={keyring}",
                f"--components={','.join(p.components)}",
                f"--include={','.join(packages(s))}",
                p.suite,
                mnt,
                p.mirror,
            ]
        )
        _configure(s, mnt, fs_uuid, loop)
    _check_disk(raw)
    img = work / "box.img"
    run(["qemu-img", "convert", "-O", "qcow2", raw, img])
    raw.unlink()
    (work / "metadata.json").write_text(
        json.dumps({"provider": "libvirt", "format": "qcow2", "virtual_size": config.BOX_DISK_GB})
    )
    (work / "Vagrantfile").write_text(BOX_VAGRANTFILE)
    partial = final.with_name(final.name + ".partial")
    with tarfile.open(partial, "w") as tar:  # uncompressed: vagrant reads plain tar too
        for name in ("metadata.json", "Vagrantfile", "box.img"):
            tar.add(work / name, arcname=name)
    partial.rename(final)
    shutil.rmtree(work)
    for stale in config.CACHE.glob(f"{s.short_name}-libvirt-*.box"):
        if stale != final:
            stale.unlink()
    log(f"box built: {final}")
    return final


def _configure(s: BoxSpec, root: Path, fs_uuid: str, loop: str) -> None:
    (root / "etc/apt/sources.list").write_text(s.lab_platform.sources_list())
    (root / "etc/apt/apt.conf.d/10mclab-snapshot").write_text(lab_image.APT_SNAPSHOT_CONF)
    (root / "etc/hostname").write_text(f"{s.short_name}\n")
    (root / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{s.short_name}\n")
    (root / "etc/fstab").write_text(f"UUID={fs_uuid} / ext4 errors=remount-ro 0 1\n")
    # The host's resolvers while building; the VM's own (resolved's stub) at the end.
    resolv = root / "etc/resolv.conf"
    if resolv.exists() or resolv.is_symlink():
        resolv.unlink()
    resolv.write_text(Path("/etc/resolv.conf").read_text())
    _bind_system(root)
    # The kernel and GRUB (its package's own install step has no device: installed below).
    _chroot(
        root,
        "debconf-set-selections",
        input="grub-pc grub-pc/install_devices multiselect\n"
        "grub-pc grub-pc/install_devices_empty boolean true\n",
    )
    _chroot(root, "apt-get", "update", "-qq")
    # debootstrap takes the release pocket only (for focal: April 2020's packages): the
    # box gets the updates and security fixes, as a maintained cloud image has them.
    _chroot(root, "apt-get", "dist-upgrade", "-y", "-qq", "--no-install-recommends")
    _chroot(root, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *kernel_packages(s))
    _boot_links(root)
    _chroot(
        root,
        "grub-install",
        "--target=i386-pc",
        "--force",
        "--modules=ext2 biosdisk search_fs_uuid",
        loop,
    )
    (root / "boot/grub/grub.cfg").write_text(GRUB_CFG.format(uuid=fs_uuid, title=s.grub_title))
    defaults = root / "etc/default/grub.d/50-mailcluster.cfg"
    defaults.parent.mkdir(parents=True, exist_ok=True)
    defaults.write_text(GRUB_DEFAULTS)
    # Network: DHCP on the first NIC; DNS from DHCP through systemd-resolved.
    net = root / "etc/systemd/network/90-mailcluster-eth0.network"
    net.write_text(NETWORK_UNIT)
    resolv.unlink()
    resolv.symlink_to("/run/systemd/resolve/stub-resolv.conf")
    for unit in ("systemd-networkd.service", "systemd-resolved.service", "ssh.service"):
        _chroot(root, "systemctl", "enable", unit)
    dropin = root / "etc/systemd/system/ssh.service.d/10-mailcluster-hostkeys.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(SSH_DROPIN)
    # The vagrant user: Vagrant's insecure key (replaced at first up), sudo without password.
    _chroot(root, "useradd", "--create-home", "--shell", "/bin/bash", "vagrant")
    ssh = root / "home/vagrant/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_text(vagrant_insecure_key())
    (ssh / "authorized_keys").chmod(0o600)
    _chroot(root, "chown", "-R", "vagrant:vagrant", "/home/vagrant/.ssh")
    sudoers = root / "etc/sudoers.d/vagrant"
    sudoers.write_text("vagrant ALL=(ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    # Every VM gets its own host keys and machine-id at first boot, never the box's.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    _chroot(root, "apt-get", "clean")
    for sub in ("dev/pts", "dev", "proc", "sys"):
        run(["umount", "-l", root / sub], check=False)


def _check_disk(raw: Path) -> None:
    """The disk as GRUB reads it (GRUB replays no journal): cleanly unmounted, and with
    what it boots."""
    if "needs_recovery" in run(["dumpe2fs", "-h", raw]).stdout:
        raise LabError(f"{raw}: the file system was not written out at unmount (journal)")
    for path in ("/vmlinuz", "/initrd.img", "/boot/grub/grub.cfg", "/boot/grub/i386-pc"):
        found = run(["debugfs", "-R", f"stat {path}", raw], check=False)
        if found.returncode != 0 or "not found" in found.stdout + found.stderr:
            raise LabError(f"{raw}: no {path} in the file system as GRUB reads it")


def _boot_links(root: Path) -> None:
    """/vmlinuz and /initrd.img, which grub.cfg boots: the kernel package's postinst
    makes them (linux-base); made here if it did not."""
    for link, pattern in (("vmlinuz", "vmlinuz-*"), ("initrd.img", "initrd.img-*")):
        path = root / link
        if path.exists():
            continue
        found = sorted((root / "boot").glob(pattern))
        if not found:
            raise LabError(f"the box has no /boot/{pattern}: the kernel did not install")
        path.unlink(missing_ok=True)
        path.symlink_to(f"boot/{found[-1].name}")


def registered(name: str) -> bool:
    proc = run(["vagrant", "box", "list", "--machine-readable"], check=False)
    return f",box-name,{name}" in proc.stdout


def ensure(platform: str = config.DEFAULT_PLATFORM) -> str:
    """Build (once) and register the platform's box; returns its name (MAILCLUSTER_BOX)."""
    s = spec(platform)
    path = build(platform)
    marker = config.CACHE / f"registered-{s.short_name}"
    if registered(s.box_name) and marker.exists() and marker.read_text() == path.name:
        return s.box_name
    log(f"registering {path.name} as the Vagrant box {s.box_name}")
    run(["vagrant", "box", "add", "--force", "--name", s.box_name, path])
    # A new box version: libvirt's copy of the old one (in the storage pool) must go.
    for vol in _pool_volumes():
        if vol.startswith(s.box_name.replace("/", "-VAGRANTSLASH-") + "_"):
            run(
                ["virsh", "-c", "qemu:///system", "vol-delete", "--pool", "default", vol],
                check=False,
            )
    marker.write_text(path.name)
    return s.box_name


def _pool_volumes() -> list[str]:
    proc = run(["virsh", "-c", "qemu:///system", "vol-list", "--pool", "default"], check=False)
    return [line.split()[0] for line in proc.stdout.splitlines()[2:] if line.strip()]


def main(argv: list[str] | None = None) -> int:
    """``python -m mailcluster.vagrant.box PLATFORM``: the build itself, which ``build``
    runs in a mount namespace of its own (``python -m mailcluster.vagrant box`` builds
    and registers)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mailcluster.vagrant.box PLATFORM", file=sys.stderr)
        return 2
    try:
        _build(spec(args[0]))
    except LabError as exc:
        print(f"box: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
