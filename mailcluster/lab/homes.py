"""Shared homes: a btrfs image, each user's home a subvolume with a qgroup limit.

The kernel here has neither classic quota formats nor NFS; btrfs qgroups give a real,
kernel-enforced home quota (a write past the limit fails with EDQUOT).
"""

from __future__ import annotations

import os
from pathlib import Path

from mailcluster.lab import config
from mailcluster.lab.system import LabError, ok, run


def up() -> None:
    config.HOMES.mkdir(parents=True, exist_ok=True)
    if ok(["mountpoint", "-q", config.HOMES]):
        return
    config.HOMES_IMAGE.unlink(missing_ok=True)  # a fresh lab gets fresh homes
    with open(config.HOMES_IMAGE, "wb") as image:
        image.truncate(config.HOMES_IMAGE_BYTES)
    run(["mkfs.btrfs", "-q", "-L", f"{config.PREFIX}-homes", config.HOMES_IMAGE])
    run(["mount", "-o", "loop", config.HOMES_IMAGE, config.HOMES])
    run(["btrfs", "quota", "enable", config.HOMES])


def add_user(user: str, uid: int, gid: int) -> Path:
    home = config.HOMES / user
    if not home.exists():
        run(["btrfs", "subvolume", "create", home])
        os.chown(home, uid, gid)
        home.chmod(0o700)
    return home


def add_plain_home(user: str, uid: int, gid: int) -> Path:
    """A home without its own subvolume (no quota): for the many benchmark users."""
    home = config.HOMES / user
    if not home.exists():
        home.mkdir(mode=0o700)
        os.chown(home, uid, gid)
    return home


def set_quota(user: str, limit_bytes: int | None) -> None:
    home = config.HOMES / user
    if not home.is_dir():
        raise LabError(f"{user}: no such lab user home ({home}); is the lab up?")
    run(["btrfs", "qgroup", "limit", "none" if limit_bytes is None else str(limit_bytes), home])
    run(["btrfs", "quota", "rescan", "-w", config.HOMES], check=False)


def usage(user: str) -> dict[str, int | None]:
    """Referenced bytes and limit of a user's home, as the kernel accounts them."""
    home = config.HOMES / user
    run(["btrfs", "filesystem", "sync", config.HOMES], check=False)
    out = run(["btrfs", "qgroup", "show", "-re", "--raw", config.HOMES]).stdout
    subvol_id = run(["btrfs", "subvolume", "show", home]).stdout
    sid = next(line.split()[-1] for line in subvol_id.splitlines() if "Subvolume ID" in line)
    for line in out.splitlines():
        cols = line.split()
        if cols and cols[0] == f"0/{sid}":
            limit = None if cols[3] == "none" else int(cols[3])
            return {"used": int(cols[1]), "limit": limit}
    raise LabError(f"{user}: no qgroup for {home}")
