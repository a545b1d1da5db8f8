"""The lab's base image: a debootstrapped Debian 12, built once per recipe and cached."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from mailcluster.lab import config
from mailcluster.lab.system import log, run

# Bump when the post-debootstrap steps below change: a new recipe means a new image.
RECIPE_VERSION = 4

SOURCES = f"""\
# Written by mailcluster's lab base image.
deb {config.MIRROR} {config.SUITE} main
deb {config.MIRROR} {config.SUITE}-updates main
deb {config.SECURITY_MIRROR} {config.SUITE}-security main
"""

# The mirror this lab uses may be a frozen snapshot: its Release files are past their
# Valid-Until date, and apt would refuse them ("Release file ... is expired").
APT_SNAPSHOT_CONF = """\
// Written by mailcluster's lab base image: the lab's mirror may be a frozen snapshot.
Acquire::Check-Valid-Until "false";
Acquire::Languages "none";
"""


def recipe() -> dict[str, object]:
    return {
        "version": RECIPE_VERSION,
        "suite": config.SUITE,
        "mirror": config.MIRROR,
        "packages": sorted(config.BASE_PACKAGES),
    }


def image_dir() -> Path:
    digest = hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:12]
    return config.CACHE / f"base-{config.SUITE}-{digest}"


def ensure_base_image(apt_proxy: str | None) -> Path:
    """Return the cached image, building it first if this recipe has none yet."""
    final = image_dir()
    if (final / ".mclab-image").exists():
        return final
    building = final.with_name(final.name + ".building")
    if building.exists():  # a killed build: start over
        shutil.rmtree(building)
    config.CACHE.mkdir(parents=True, exist_ok=True)
    log(f"building base image {final.name} (once per recipe; a few minutes)")
    env = {"http_proxy": apt_proxy} if apt_proxy else {}
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(config.BASE_PACKAGES)}",
            config.SUITE,
            building,
            config.MIRROR,
        ],
        env=env,
    )
    _configure(building)
    (building / ".mclab-image").write_text(json.dumps(recipe(), indent=2) + "\n")
    building.rename(final)
    for stale in config.CACHE.glob(f"base-{config.SUITE}-*"):
        if stale != final and stale.is_dir():
            shutil.rmtree(stale)
    return final


def _configure(root: Path) -> None:
    (root / "etc/apt/sources.list").write_text(SOURCES)
    (root / "etc/apt/apt.conf.d/10mclab-snapshot").write_text(APT_SNAPSHOT_CONF)
    # Every machine gets its own host keys and machine-id at `up`, never the image's.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    # Networking by systemd-networkd (a static address per machine, written at `up`).
    run(["chroot", root, "systemctl", "enable", "systemd-networkd.service"])
    # No console login prompts: the machines are reached by SSH only.
    run(["chroot", root, "systemctl", "mask", "console-getty.service"])
    # Nothing to remount in a container (nspawn mounts the root), and on a lab host with
    # hybrid cgroups the unit sporadically fails at boot with 219/CGROUP.
    run(["chroot", root, "systemctl", "mask", "systemd-remount-fs.service"])
    run(["chroot", root, "apt-get", "clean"])
