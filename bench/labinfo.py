"""What the benchmarks read about the lab: `python -m mailcluster.lab info --json`.

Importing it puts the repository on ``sys.path``: the scripts run commands on the lab's
machines with ``tests.hosts.run``, the tests' own helper."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def lab_info() -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "mailcluster.lab", "info", "--json"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return json.loads(out)


def mail_nodes(info: dict[str, Any]) -> dict[str, str]:
    """Mail node name -> address, in the order of `lab info`."""
    nodes = {h["name"]: h["address"] for h in info["hosts"] if "mail" in h["groups"]}
    if not nodes:
        raise SystemExit("lab info lists no mail node")
    return nodes


def machine() -> str:
    """The lab host, as the benchmark tables name it."""
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return (
        f"{len(os.sched_getaffinity(0))} vCPUs (nproc), {mem_kb / 1024**2:.1f} GiB memory "
        f"(MemTotal), kernel {platform.release()}"
    )


def backend_of(info: dict[str, Any]) -> Callable[[str], str]:
    """The deploy's own user -> backend map (``Site.backend_of``: overrides and draining
    nodes included), from the lab's site file: never recomputed here."""
    from mailcluster import site as site_mod

    return site_mod.load(Path(info["site_file"])).backend_of


# The lab's shared homes, as the lab host sees them (mail nodes mount them at /home).
HOMES = Path("/var/lib/mclab/homes")


def maildir_counts(users: set[str], prefix: str) -> Counter[str]:
    """Message-ID -> number of files holding it, over the users' Maildirs (new and cur),
    for the Message-IDs that start with ``prefix`` (``<lost-RUNID-``)."""
    counts: Counter[str] = Counter()
    needle = prefix.encode()
    for user in users:
        for sub in ("new", "cur"):
            folder = HOMES / user / "Maildir" / sub
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                try:
                    head = path.read_bytes()[:4096]
                except OSError:
                    continue
                start = head.find(needle)
                if start >= 0:
                    counts[head[start : head.find(b">", start) + 1].decode()] += 1
    return counts
