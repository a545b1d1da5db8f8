"""The RoundCube security table and the version check the webmail role applies."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from mailcluster import webmail_security as ws

PAIRS = [
    ("1.4.3+dfsg.1-1", "1.4.3+dfsg.1-1ubuntu0.1~esm5"),
    ("1.4.3+dfsg.1-1ubuntu0.1~esm5", "1.4.3+dfsg.1-1ubuntu0.1"),
    ("1.6.5+dfsg-1+deb12u4", "1.6.5+dfsg-1+deb12u5"),
    ("1.6.5+dfsg-1+deb12u9", "1.6.5+dfsg-1+deb12u14"),
    ("1.6.3+dfsg-1~deb12u1", "1.6.3+dfsg-1"),
    ("1.6.6+dfsg-1", "1.6.6+dfsg-2ubuntu0.1"),
    ("1.0", "1:0.1"),
    ("1.2~rc1", "1.2"),
    ("1.2a", "1.2+"),
]


@pytest.mark.parametrize("low,high", PAIRS)
def test_versions_order_as_dpkg_does(low: str, high: str) -> None:
    assert ws.compare_versions(low, high) == -1
    assert ws.compare_versions(high, low) == 1
    assert ws.compare_versions(low, low) == 0
    if shutil.which("dpkg"):
        assert subprocess.run(["dpkg", "--compare-versions", low, "lt", high]).returncode == 0


def test_ubuntu_20_04s_roundcube_has_both_holes() -> None:
    holes = ws.unfixed("Ubuntu", 20, "1.4.3+dfsg.1-1")
    assert {h.cve for h in holes} == {"CVE-2025-49113", "CVE-2023-43770"}
    message = ws.refusal("webmail01", "Ubuntu", 20, "1.4.3+dfsg.1-1", holes)
    assert "CVE-2025-49113" in message and "Ubuntu Pro" in message and "Debian 12" in message


def test_ubuntu_pros_esm_build_passes() -> None:
    assert ws.unfixed("Ubuntu", 20, "1.4.3+dfsg.1-1ubuntu0.1~esm5") == []


def test_debian_12_before_and_after_the_rce_fix() -> None:
    assert [h.cve for h in ws.unfixed("Debian", 12, "1.6.5+dfsg-1+deb12u4")] == ["CVE-2025-49113"]
    assert ws.unfixed("Debian", 12, "1.6.5+dfsg-1+deb12u14") == []


def test_a_release_missing_from_the_table_is_unfixed() -> None:
    assert len(ws.unfixed("Debian", 11, "99")) == len(ws.HOLES)


def test_which_public_archives_carry_the_fixes() -> None:
    assert ws.platform_has_fixes("Debian", 12)
    assert ws.platform_has_fixes("Ubuntu", 24)
    assert not ws.platform_has_fixes("Ubuntu", 20)  # Ubuntu Pro only
    assert not ws.platform_has_fixes("Ubuntu", 22)
