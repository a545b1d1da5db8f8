"""Shared fixtures: the cluster under test as its `info --json` describes it.

The target is the lab (`python -m mailcluster.lab info --json`) unless
MAILCLUSTER_TARGET=vagrant: then the Vagrant cluster (`python -m mailcluster.vagrant info
--json`, the same shape). Tests of lab-only features skip on Vagrant (`lab_only`).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import hosts

REPO = Path(__file__).resolve().parent.parent
# How long clients wait for a server, scaled for targets slower than real machines:
# scripts/vagrant-test sets 3 under plain emulation (qemu TCG, 10-50x slower than KVM),
# where a refused login's answer (Dovecot's failure delay and per-address penalty) or a
# proxied login can take longer than the 20-30 s a client waits on real hardware. What
# the tests check is what the server answers, not how fast: the benchmarks time things.
TIMEOUT_SCALE = float(os.environ.get("MAILCLUSTER_TIMEOUT_SCALE", "1"))


def patience(seconds: float) -> float:
    """A client timeout of ``seconds`` on real machines, scaled for the target."""
    return seconds * TIMEOUT_SCALE


# What the end-to-end tests run against: "lab" (default) or "vagrant".
TARGET = os.environ.get("MAILCLUSTER_TARGET", "lab")
if TARGET not in ("lab", "vagrant"):
    raise SystemExit(f"MAILCLUSTER_TARGET={TARGET!r}: expected lab or vagrant")
_STATE = {"lab": REPO / ".lab" / "state.json", "vagrant": REPO / ".vagrant/mailcluster/state.json"}

# The target's pyinfra inventory (tests that run mailctl or pyinfra against the cluster:
# never the lab's when the target is the Vagrant cluster).
INVENTORY = {"lab": "inventory/lab.py", "vagrant": "inventory/vagrant.py"}[TARGET]

# For tests of what only the lab has (btrfs home quotas set by `mailcluster.lab quota`).
lab_only = pytest.mark.skipif(
    TARGET != "lab", reason=f"lab-only feature (target is {TARGET}, MAILCLUSTER_TARGET)"
)


def lab_state_hosts() -> list[dict[str, Any]]:
    """The target's hosts at collection time (empty when it is not up)."""
    state = _STATE[TARGET]
    return json.loads(state.read_text())["hosts"] if state.exists() else []


def console_tail(name: str, lines: int = 40) -> str:
    """The end of a lab machine's console (its nspawn log), without colour codes."""
    from mailcluster.lab import config

    log = config.MACHINES / f"{config.MACHINE_PREFIX}{name}" / "nspawn.log"
    if not log.exists():
        return f"(no console log at {log})"
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))
    return "\n".join(text.splitlines()[-lines:])


# SERVICE.md's matrix, for IMAP and SMTP alike: the (connection, mechanism) cells that
# accept the right password. Without TLS only CRAM-MD5; with TLS, all three.
ALLOWED_CELLS = [
    ("plain", "CRAM-MD5"),
    ("starttls", "LOGIN"),
    ("starttls", "PLAIN"),
    ("starttls", "CRAM-MD5"),
    ("tls", "LOGIN"),
    ("tls", "PLAIN"),
    ("tls", "CRAM-MD5"),
]


def platform_of(host) -> Any:  # noqa: ANN001 - a testinfra Host
    """The host's platform facts (mailcluster.platform), read from its /etc/os-release:
    tests ask it for PHP's and PostgreSQL's versions instead of hard-coding one distro's."""
    from mailcluster.platform import Platform

    release = dict(
        line.split("=", 1)
        for line in host.file("/etc/os-release").content_string.splitlines()
        if "=" in line
    )
    distro = release["NAME"].strip('"').split()[0]
    major = int(release["VERSION_ID"].strip('"').split(".")[0])
    return Platform(distro=distro, major=major, container="systemd-nspawn")


def node_address(lab: dict[str, Any], name: str) -> str:
    return next(h["address"] for h in lab["hosts"] if h["name"] == name)


def host_address(lab: dict[str, Any]) -> str:
    """The test host's own address on the cluster's network (where its clients and the
    mail sink are): the lab's 10.77.0.1, the Vagrant network's 10.78.0.1."""
    return str(lab["sink_smtp"]).rsplit(":", 1)[0]


def password_of(lab: dict[str, Any], user: str) -> str:
    return next(a["password"] for a in lab["accounts"] if a["user"] == user)


def backend_of(lab: dict[str, Any], user: str) -> str:
    """The mail node holding ``user``'s mailbox: the deploy's own map (``Site.backend_of``:
    overrides and draining nodes included), from the target's site file."""
    path = Path(lab["site_file"])
    return _site(str(path), path.stat().st_mtime_ns).backend_of(user)


@functools.lru_cache(maxsize=8)
def _site(path: str, mtime_ns: int) -> Any:  # noqa: ARG001 - the cache key: a new file, a new site
    from mailcluster import site as site_mod

    return site_mod.load(Path(path))


class LabInfo(dict[str, Any]):
    """The target's info; its repr names the keys only. A failing test's traceback shows
    its fixtures' values, and this one holds the test users' passwords: CI logs keep
    them."""

    def __repr__(self) -> str:
        return f"<lab info: {', '.join(sorted(self))}>"


@pytest.fixture(scope="session")
def lab() -> dict[str, Any]:
    """The target's `info --json`: the lab's, or with MAILCLUSTER_TARGET=vagrant the
    Vagrant cluster's (same keys)."""
    module = "mailcluster.vagrant" if TARGET == "vagrant" else "mailcluster.lab"
    proc = subprocess.run(
        [sys.executable, "-m", module, "info", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if proc.returncode != 0:
        hint = "make vagrant-test" if TARGET == "vagrant" else "make lab"
        pytest.fail(f"the {TARGET} target is not up ({proc.stderr.strip()}); run: {hint}")
    return LabInfo(json.loads(proc.stdout))


@pytest.fixture(scope="session")
def lab_ssh(lab: dict[str, Any]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a shell command on a lab machine as root: tests/hosts.py's ``run`` with the
    target's ssh_config, called as ``lab_ssh(name, command, check=True, input=None)``
    (``timeout=`` too; 120 s unless told)."""
    return functools.partial(hosts.run, lab["ssh_config"])


def lab_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m mailcluster.lab ...` from the repo root."""
    return subprocess.run(
        [sys.executable, "-m", "mailcluster.lab", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )


def pyinfra(
    *args: str, env: dict[str, str] | None = None, yes: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the pyinfra CLI from the repo root, as an operator would. ``yes=False``: no
    ``-y``, for ``--dry --diff`` (with -y pyinfra skips the comparison)."""
    import os

    exe = Path(sys.executable).with_name("pyinfra")
    return subprocess.run(
        [str(exe), *(["-y"] if yes else []), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=1200,
    )
