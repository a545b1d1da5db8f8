"""The lab's base images: one debootstrapped root per platform, built once per recipe and
cached (``/var/cache/mclab/base-<suite>-<recipe hash>``)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from mailcluster.lab import config, platforms
from mailcluster.lab.platforms import LabPlatform
from mailcluster.lab.system import log, run

# Bump when the post-debootstrap steps below change: a new recipe means a new image.
RECIPE_VERSION = 8

# The mirror this lab uses may be a frozen snapshot: its Release files are past their
# Valid-Until date, and apt would refuse them ("Release file ... is expired").
APT_SNAPSHOT_CONF = """\
// Written by mailcluster's lab base image: the lab's mirror may be a frozen snapshot.
Acquire::Check-Valid-Until "false";
Acquire::Languages "none";
"""


def recipe(p: LabPlatform) -> dict[str, object]:
    return {
        "version": RECIPE_VERSION,
        "platform": p.name,
        "suite": p.suite,
        "mirror": p.mirror,
        "components": list(p.components),
        "keys": list(p.keys),
        "packages": sorted(config.BASE_PACKAGES),
    }


def image_dir(p: LabPlatform) -> Path:
    digest = hashlib.sha256(json.dumps(recipe(p), sort_keys=True).encode()).hexdigest()[:12]
    return config.CACHE / f"base-{p.suite}-{digest}"


def ensure_base_image(p: LabPlatform, apt_proxy: str | None) -> Path:
    """Return the platform's cached image, building it first if this recipe has none yet."""
    final = image_dir(p)
    if (final / ".mclab-image").exists():
        return final
    building = final.with_name(final.name + ".building")
    if building.exists():  # a killed build: start over
        shutil.rmtree(building)
    config.CACHE.mkdir(parents=True, exist_ok=True)
    log(f"building base image {final.name} ({p.name}; once per recipe; a few minutes)")
    keyring = platforms.pinned_keyring(p, config.CACHE / "keyrings" / f"{p.name}.gpg", apt_proxy)
    env = {"http_proxy": apt_proxy} if apt_proxy else {}
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--keyring={keyring}",
            f"--components={','.join(p.components)}",
            f"--include={','.join(config.BASE_PACKAGES)}",
            p.suite,
            building,
            p.mirror,
            p.debootstrap_script(),
        ],
        env=env,
    )
    _configure(p, building)
    _update(building, env)
    _forget_identity(building)
    (building / ".mclab-image").write_text(json.dumps(recipe(p), indent=2) + "\n")
    building.rename(final)
    for stale in config.CACHE.glob(f"base-{p.suite}-*"):
        if stale != final and stale.is_dir() and not _in_use(stale):
            shutil.rmtree(stale)
    return final


def _in_use(image: Path) -> bool:
    """Whether a mounted machine root has ``image`` as its lower layer (a running lab
    built from an older recipe: removing its image would pull the ground from under it).
    It stays in the cache; the next build after that lab is gone removes it."""
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:
        return False
    return f"lowerdir={image}," in mounts or f"lowerdir={image} " in mounts


def _configure(p: LabPlatform, root: Path) -> None:
    (root / "etc/apt/sources.list").write_text(p.sources_list())
    (root / "etc/apt/apt.conf.d/10mclab-snapshot").write_text(APT_SNAPSHOT_CONF)
    # Networking by systemd-networkd (a static address per machine, written at `up`).
    run(["chroot", root, "systemctl", "enable", "systemd-networkd.service"])
    # DNS: the resolv.conf nspawn copies from the host (the lab's NAT allows only the
    # host's resolvers). Ubuntu enables systemd-resolved, whose stub would ask elsewhere.
    if (root / "lib/systemd/system/systemd-resolved.service").exists():
        run(["chroot", root, "systemctl", "disable", "systemd-resolved.service"])
        resolv = root / "etc/resolv.conf"
        if resolv.is_symlink():
            resolv.unlink()
            resolv.write_text("")
    # No console login prompts: the machines are reached by SSH only.
    run(["chroot", root, "systemctl", "mask", "console-getty.service"])
    # Nothing to remount in a container (nspawn mounts the root), and on a lab host with
    # hybrid cgroups the unit sporadically fails at boot with 219/CGROUP.
    run(["chroot", root, "systemctl", "mask", "systemd-remount-fs.service"])
    # root's user manager lingers: started once at boot, not started and stopped around
    # every SSH session (the tests open thousands). On 20.04 (systemd 245) such a start
    # right after a stop meets the same 219/CGROUP race now and then, and
    # user-runtime-dir@0.service stayed failed (CI of 0d1f341: tests/infra's
    # no-failed-units check on a 20.04 node).
    linger = root / "var/lib/systemd/linger"
    linger.mkdir(parents=True, exist_ok=True)
    (linger / "root").write_text("")
    run(["chroot", root, "apt-get", "clean"])


def _update(root: Path, env: dict[str, str]) -> None:
    """Bring the image up to the -updates and -security pockets, as an installed and
    maintained machine is (production: unattended-upgrades). debootstrap installs the
    release pocket only; then every fresh lab deploy upgraded systemd itself (focal:
    245.4-4ubuntu3 -> 3.24), whose daemon-reexec restarted units inside the container
    and met systemd 245's 219/CGROUP race there: a unit failed at boot, now and then."""
    resolv = root / "etc/resolv.conf"
    saved = resolv.read_bytes() if resolv.exists() else b""
    resolv.write_bytes(Path("/etc/resolv.conf").read_bytes())  # the host's, for apt
    # No service may start inside the chroot (invoke-rc.d asks this first).
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    apt = ["chroot", str(root), "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-q"]
    try:
        run([*apt, "update"], env=env)
        run([*apt, "-y", "-o", "Dpkg::Options::=--force-confold", "dist-upgrade"], env=env)
        run([*apt, "clean"], env=env)
    finally:
        policy.unlink()
        resolv.write_bytes(saved)


def _forget_identity(root: Path) -> None:
    """Every machine gets its own host keys and machine-id at `up`, never the image's
    (after the update: an upgraded openssh-server makes new host keys)."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
