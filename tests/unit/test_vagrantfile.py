"""The Vagrantfile is valid Vagrant configuration for every topology and provider, and
its VMs boot the boxes chosen (by default the boxes built here: Ubuntu 20.04, Debian 12
for webmail).

`vagrant validate` loads the Vagrantfile as Vagrant does (it reads the topology from
`python -m mailcluster.lab.topology`), so the VM names and groups checked here are the
ones `vagrant up` would make. Vagrant is a host package (scripts/host-deps): missing, the
test fails rather than skips, so CI cannot pass without it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from mailcluster.lab.system import LabError
from mailcluster.lab.topology import machines
from mailcluster.vagrant import box, config
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


# -- the boxes (mailcluster.vagrant.config.selected_boxes, read by the Vagrantfile) -------


def vms(topology: str = "small", **env: str) -> dict[str, dict[str, object]]:
    """The VMs as the Vagrantfile reads them (`python -m mailcluster.vagrant.topology`)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAILCLUSTER_")}
    proc = subprocess.run(
        [sys.executable, "-m", "mailcluster.vagrant.topology", topology],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
    )
    assert proc.returncode == 0, proc.stderr
    return {vm["name"]: vm for vm in json.loads(proc.stdout)}


def test_by_default_mail_nodes_boot_ubuntu_2004_and_webmail_debian_12() -> None:
    got = vms()
    assert {n: (vm["box"], vm["platform"]) for n, vm in got.items()} == {
        "mail01": ("mailcluster/ubuntu2004", "ubuntu20.04"),
        "mail02": ("mailcluster/ubuntu2004", "ubuntu20.04"),
        "webmail01": ("mailcluster/debian12", "debian12"),
    }
    assert [vm["address"] for vm in got.values()] == ["10.78.0.11", "10.78.0.12", "10.78.0.13"]


@pytest.mark.parametrize(
    "env", [{"MAILCLUSTER_BOX": "mailcluster/debian12"}, {"MAILCLUSTER_PLATFORM": "debian12"}]
)
def test_the_debian_box_everywhere(env: dict[str, str]) -> None:
    assert {vm["box"] for vm in vms("full", **env).values()} == {"mailcluster/debian12"}


def test_a_box_not_built_here_is_used_as_named() -> None:
    got = vms(MAILCLUSTER_BOX="generic/ubuntu2004")
    assert {vm["box"] for vm in got.values()} == {"generic/ubuntu2004"}
    assert not any("platform" in vm for vm in got.values())
    web = vms(MAILCLUSTER_BOX="generic/ubuntu2004", MAILCLUSTER_WEBMAIL_BOX="generic/debian12")
    assert web["webmail01"]["box"] == "generic/debian12"
    assert web["mail01"]["box"] == "generic/ubuntu2004"


def test_a_platform_without_a_box_recipe_is_refused() -> None:
    with pytest.raises(LabError, match="MAILCLUSTER_PLATFORM"):
        config.selected_boxes({"MAILCLUSTER_PLATFORM": "ubuntu24.04"})


def test_each_box_has_its_own_recipe_file_and_name() -> None:
    ubuntu, debian = box.spec("ubuntu20.04"), box.spec("debian12")
    assert (ubuntu.box_name, debian.box_name) == ("mailcluster/ubuntu2004", "mailcluster/debian12")
    assert box.recipe(ubuntu)["suite"] == "focal" and box.recipe(debian)["suite"] == "bookworm"
    assert box.box_file(ubuntu).name.startswith("ubuntu2004-libvirt-")
    assert box.box_file(debian).name.startswith("debian12-libvirt-")
    # focal's systemd package holds resolved; bookworm has it apart.
    assert "systemd-resolved" not in box.packages(ubuntu)
    assert "systemd-resolved" in box.packages(debian)
    assert "linux-image-kvm" in box.kernel_packages(ubuntu)
    assert "linux-image-cloud-amd64" in box.kernel_packages(debian)
