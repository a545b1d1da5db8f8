"""The Vagrantfile is valid Vagrant configuration for every topology and provider.

`vagrant validate` loads the Vagrantfile as Vagrant does (it reads the topology from
`python -m mailcluster.lab.topology`), so the VM names and groups checked here are the
ones `vagrant up` would make. Vagrant is a host package (scripts/host-deps): missing, the
test fails rather than skips, so CI cannot pass without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from mailcluster.lab.topology import machines
from tests.conftest import REPO


def vagrant(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which("vagrant"), "vagrant is not installed (scripts/host-deps installs it)"
    return subprocess.run(
        ["vagrant", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MAILCLUSTER_PYTHON": sys.executable, **env},
    )


@pytest.mark.parametrize("topology", ["small", "full"])
@pytest.mark.parametrize("provider", ["libvirt", "virtualbox"])
def test_vagrant_validate(topology: str, provider: str) -> None:
    # --ignore-provider: VirtualBox need not be installed for its settings to be checked
    # by Vagrant's core; libvirt's are checked by its plugin below.
    proc = vagrant(
        "validate",
        "--ignore-provider",
        MAILCLUSTER_TOPOLOGY=topology,
        MAILCLUSTER_PROVIDER=provider,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


@pytest.mark.parametrize("driver", ["kvm", "qemu"])
def test_vagrant_validate_with_libvirt_settings(driver: str) -> None:
    proc = vagrant("validate", MAILCLUSTER_LIBVIRT_DRIVER=driver)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("topology", ["small", "full"])
def test_vagrant_machines_are_the_topology(topology: str) -> None:
    proc = vagrant("status", "--machine-readable", MAILCLUSTER_TOPOLOGY=topology)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {line.split(",")[1] for line in proc.stdout.splitlines() if ",state," in line}
    assert names == {m.name for m in machines(topology)}


def test_a_bad_driver_is_refused() -> None:
    proc = vagrant("validate", MAILCLUSTER_LIBVIRT_DRIVER="xen")
    assert proc.returncode != 0
    assert "MAILCLUSTER_LIBVIRT_DRIVER" in proc.stdout + proc.stderr
