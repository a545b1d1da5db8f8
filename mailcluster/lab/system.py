"""Running host commands, with errors that say what failed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class LabError(Exception):
    pass


def log(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def run(
    cmd: Sequence[str | Path],
    *,
    check: bool = True,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    args = [str(c) for c in cmd]
    proc = subprocess.run(
        args,
        input=input,
        text=True,
        capture_output=True,
        env={**os.environ, **env} if env else None,
    )
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise LabError(f"{' '.join(args)} failed ({proc.returncode}): " + " | ".join(detail))
    return proc


def ok(cmd: Sequence[str | Path]) -> bool:
    return run(cmd, check=False).returncode == 0


def wait_until(what: str, probe: Callable[[], bool], timeout: float, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def processes_under(marker: str) -> list[int]:
    """PIDs whose command line or root file system mentions ``marker`` (a lab path).

    A machine's processes live in their own mount namespace; their root mount (an overlay
    whose options name the machine's folder) identifies them even after the nspawn that
    started them was killed and they were reparented.
    """
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            root_mount = next(
                (
                    line
                    for line in (entry / "mountinfo").read_text().splitlines()
                    if line.split()[4] == "/"
                ),
                "",
            )
        except (OSError, IndexError):
            continue
        if marker in cmdline or marker in root_mount:
            found.append(int(entry.name))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def mounts_under(prefix: Path) -> list[str]:
    """Mount points below ``prefix``, deepest first (the order to unmount them)."""
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].encode().decode("unicode_escape")
        if point == str(prefix) or point.startswith(f"{prefix}/"):
            points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)
