"""The deploy never installs a RoundCube with known exploited holes silently.

Runs on a fresh lab whose webmail host is on Ubuntu 20.04 (RoundCube 1.4.3, no fix in
the public archive): `make test-platforms` boots it, runs this before any deploy, then
deploys with the lab's override and runs the infra and end-to-end suites there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mailcluster import webmail_security
from tests.conftest import INVENTORY, pyinfra


@pytest.fixture
def site_without_override(lab: dict[str, Any]) -> Any:
    path = Path(lab["site_file"])
    original = path.read_text()
    site = yaml.safe_load(original)
    if not site.get("webmail", {}).get("allow_known_vulnerable_roundcube"):
        pytest.skip("no webmail host of this lab is on a platform without a fixed RoundCube")
    del site["webmail"]
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    try:
        yield
    finally:
        path.write_text(original)


def test_an_unfixed_roundcube_stops_the_run_before_any_host_is_touched(
    lab: dict[str, Any], lab_ssh: Any, site_without_override: Any
) -> None:
    web = next(h for h in lab["hosts"] if "webmail" in h["groups"])
    fresh = lab_ssh(web["name"], "dpkg -s roundcube-core", check=False)
    if fresh.returncode == 0:
        pytest.skip("RoundCube is installed already: this test needs the fresh lab")
    proc = pyinfra(INVENTORY, "deploy.py")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    for hole in webmail_security.HOLES:
        assert hole.cve in out, out[-2000:]
    assert "Ubuntu Pro" in out and "Debian 12" in out
    assert webmail_security.OVERRIDE in out
    # Nothing installed there, and no operation ran anywhere (the base role's first
    # operation writes the apt proxy file on every host).
    assert lab_ssh(web["name"], "dpkg -s roundcube-core", check=False).returncode != 0
    for h in lab["hosts"]:
        probe = lab_ssh(h["name"], "test -e /etc/apt/apt.conf.d/01mailcluster-proxy", check=False)
        assert probe.returncode != 0, f"{h['name']} was touched"
