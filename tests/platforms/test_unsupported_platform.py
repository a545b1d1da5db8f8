"""A host on a platform that no test deploys stops the whole run before any host is
touched (mailcluster/platform.py SUPPORTED; README "Platforms").

`make test-platforms` runs this on its fresh lab, before the first deploy: one more mail
node on Ubuntu 22.04 (the tables know it; no test deploys it), a deploy that must refuse
it, and the node removed again."""

from __future__ import annotations

from typing import Any

import pytest

from mailcluster.platform import SUPPORTED
from tests.conftest import INVENTORY, lab_cli, pyinfra

NAME = "mail22"
PLATFORM = "ubuntu22.04"


@pytest.fixture
def unsupported_node(lab: dict[str, Any], lab_ssh: Any) -> Any:
    probe = lab_ssh(
        lab["hosts"][0]["name"], "test -e /etc/apt/apt.conf.d/01mailcluster-proxy", check=False
    )
    if probe.returncode == 0:
        pytest.skip("this lab was deployed already: this test needs the fresh lab")
    added = lab_cli("add", NAME, "--platform", PLATFORM)
    assert added.returncode == 0, added.stderr[-2000:]
    try:
        yield NAME
    finally:
        removed = lab_cli("remove", "--force", NAME)
        assert removed.returncode == 0, removed.stderr[-2000:]


def test_a_host_on_an_unsupported_platform_stops_the_run_before_any_host_is_touched(
    lab: dict[str, Any], lab_ssh: Any, unsupported_node: str
) -> None:
    os_release = lab_ssh(unsupported_node, ". /etc/os-release; echo $ID $VERSION_ID").stdout
    assert os_release.split() == ["ubuntu", "22.04"], os_release
    proc = pyinfra(INVENTORY, "deploy.py")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert f"{unsupported_node}: Ubuntu 22 is not a supported platform" in out, out[-2000:]
    for distro, major in SUPPORTED:
        assert f"{distro} {major}" in out, out[-2000:]
    # No operation ran anywhere: the base role's first operation writes the apt proxy
    # file on every host, the new one included.
    for name in [h["name"] for h in lab["hosts"]] + [unsupported_node]:
        probe = lab_ssh(name, "test -e /etc/apt/apt.conf.d/01mailcluster-proxy", check=False)
        assert probe.returncode != 0, f"{name} was touched"
