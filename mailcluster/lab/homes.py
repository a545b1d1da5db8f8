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


def _qgroup(user: str) -> str:
    """The level-0 qgroup of a user's home subvolume, e.g. "0/261"."""
    home = config.HOMES / user
    if not home.is_dir():
        raise LabError(f"{user}: no such lab user home ({home}); is the lab up?")
    out = run(["btrfs", "subvolume", "show", home]).stdout
    sid = next(line.split()[-1] for line in out.splitlines() if "Subvolume ID" in line)
    return f"0/{sid}"


def set_quota(user: str, limit_bytes: int | None) -> None:
    # Addressed by qgroup id on the file system's root: a limit change on the home's own
    # path starts a transaction charged to that home, which fails with EDQUOT once the
    # home is over its limit -- exactly when the limit must be raised.
    qgroup = _qgroup(user)
    value = "none" if limit_bytes is None else str(limit_bytes)
    run(["btrfs", "qgroup", "limit", value, qgroup, config.HOMES])
    # Commit now: until the transaction commits, writes may still pass the old limit.
    run(["btrfs", "filesystem", "sync", config.HOMES])


def usage(user: str) -> dict[str, int | None]:
    """Referenced bytes and limit of a user's home, as the kernel accounts them."""
    qgroup = _qgroup(user)
    run(["btrfs", "filesystem", "sync", config.HOMES], check=False)
    out = run(["btrfs", "qgroup", "show", "-re", "--raw", config.HOMES]).stdout
    for line in out.splitlines():
        cols = line.split()
        if cols and cols[0] == qgroup:
            limit = None if cols[3] == "none" else int(cols[3])
            return {"used": int(cols[1]), "limit": limit}
    raise LabError(f"{user}: no qgroup {qgroup}")
