"""A Debian 12 Vagrant box for libvirt, built locally from debootstrap (no box download).

The disk is one whole-disk ext4 filesystem (this host's kernel makes no partition devices
for loop files), booted by GRUB installed with ``grub-install --force`` (block lists,
no embedding area) and a grub.cfg written here (``update-grub`` skips a loop-device
root). Inside: systemd-networkd (DHCP on eth0, which vagrant-libvirt needs to find the
VM; Vagrant's Debian guest plugin writes networkd files for the private network),
systemd-resolved, sshd with host keys generated at first boot, the ``vagrant`` user with
Vagrant's insecure key (replaced by Vagrant at first ``up``) and passwordless sudo.

Built once per recipe into /var/cache/mcvagrant and registered with ``vagrant box add``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from mailcluster.lab import config as lab_config
from mailcluster.lab import image as lab_image
from mailcluster.lab.platforms import PLATFORMS
from mailcluster.lab.system import LabError, log, ok, run
from mailcluster.vagrant import config

DEBIAN12 = PLATFORMS["debian12"]

RECIPE_VERSION = 1

# What a cloud VM image has: the lab's base packages plus a kernel, a bootloader, udev,
# and DNS from DHCP (systemd-resolved). The cloud kernel: virtio built for, small initrd.
PACKAGES = [
    *lab_config.BASE_PACKAGES,
    "systemd-resolved",
    "udev",
    "kmod",
    "e2fsprogs",
]
KERNEL_PACKAGES = ["linux-image-cloud-amd64", "grub-pc", "initramfs-tools"]

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
menuentry "Debian GNU/Linux" {{
    linux /vmlinuz root=UUID={uuid} ro console=ttyS0,115200 net.ifnames=0 biosdevname=0 quiet
    initrd /initrd.img
}}
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


def packages() -> list[str]:
    return sorted(set(PACKAGES))


def recipe() -> dict[str, object]:
    return {
        "version": RECIPE_VERSION,
        "suite": DEBIAN12.suite,
        "mirror": DEBIAN12.mirror,
        "packages": packages(),
        "kernel": KERNEL_PACKAGES,
        "disk_gb": config.BOX_DISK_GB,
        "files": hashlib.sha256(
            (NETWORK_UNIT + SSH_DROPIN + GRUB_CFG + BOX_VAGRANTFILE).encode()
        ).hexdigest(),
    }


def box_file() -> Path:
    digest = hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:12]
    return config.CACHE / f"debian12-libvirt-{digest}.box"


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


def build() -> Path:
    """Build the box file for the current recipe (or return the cached one)."""
    final = box_file()
    if final.exists():
        return final
    work = config.CACHE / "box-build"
    if work.exists():  # a killed build: start over
        for line in Path("/proc/self/mounts").read_text().splitlines():
            point = line.split()[1]
            if point.startswith(str(work)):
                run(["umount", "-l", point], check=False)
        shutil.rmtree(work)
    work.mkdir(parents=True)
    log(f"building the Debian 12 box {final.name} (once per recipe; several minutes)")
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
                f"--include={','.join(packages())}",
                DEBIAN12.suite,
                mnt,
                DEBIAN12.mirror,
            ]
        )
        _configure(mnt, fs_uuid, loop)
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
    for stale in config.CACHE.glob("debian12-libvirt-*.box"):
        if stale != final:
            stale.unlink()
    log(f"box built: {final}")
    return final


def _configure(root: Path, fs_uuid: str, loop: str) -> None:
    (root / "etc/apt/sources.list").write_text(DEBIAN12.sources_list())
    (root / "etc/apt/apt.conf.d/10mclab-snapshot").write_text(lab_image.APT_SNAPSHOT_CONF)
    (root / "etc/hostname").write_text("debian12\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tdebian12\n")
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
    _chroot(root, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *KERNEL_PACKAGES)
    _chroot(
        root,
        "grub-install",
        "--target=i386-pc",
        "--force",
        "--modules=ext2 biosdisk search_fs_uuid",
        loop,
    )
    (root / "boot/grub/grub.cfg").write_text(GRUB_CFG.format(uuid=fs_uuid))
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


def registered() -> bool:
    proc = run(["vagrant", "box", "list", "--machine-readable"], check=False)
    return f",box-name,{config.BOX_NAME}" in proc.stdout


def ensure() -> str:
    """Build (once) and register the box; returns its name (MAILCLUSTER_BOX)."""
    path = build()
    marker = config.CACHE / "registered"
    if registered() and marker.exists() and marker.read_text() == path.name:
        return config.BOX_NAME
    log(f"registering {path.name} as the Vagrant box {config.BOX_NAME}")
    run(["vagrant", "box", "add", "--force", "--name", config.BOX_NAME, path])
    # A new box version: libvirt's copy of the old one (in the storage pool) must go.
    for vol in _pool_volumes():
        if vol.startswith(config.BOX_NAME.replace("/", "-VAGRANTSLASH-")):
            run(
                ["virsh", "-c", "qemu:///system", "vol-delete", "--pool", "default", vol],
                check=False,
            )
    marker.write_text(path.name)
    return config.BOX_NAME


def _pool_volumes() -> list[str]:
    proc = run(["virsh", "-c", "qemu:///system", "vol-list", "--pool", "default"], check=False)
    return [line.split()[0] for line in proc.stdout.splitlines()[2:] if line.strip()]
