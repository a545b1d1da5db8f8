"""The lab's platforms: archives, and signing keys trusted by pinned fingerprint only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mailcluster.lab import platforms
from mailcluster.lab.system import LabError

DEBIAN = platforms.PLATFORMS["debian12"]
needs_keyring = pytest.mark.skipif(
    not DEBIAN.host_keyring.exists(), reason="no Debian archive keyring on this host"
)


def test_every_contract_platform_is_known() -> None:
    assert set(platforms.PLATFORMS) == {"ubuntu20.04", "ubuntu22.04", "ubuntu24.04", "debian12"}
    assert platforms.DEFAULT == "ubuntu20.04"


def test_ubuntu_sources_carry_main_and_universe_with_updates_and_security() -> None:
    lines = platforms.PLATFORMS["ubuntu20.04"].sources_list().splitlines()[1:]
    assert lines == [
        "deb http://archive.ubuntu.com/ubuntu focal main universe",
        "deb http://archive.ubuntu.com/ubuntu focal-updates main universe",
        "deb http://security.ubuntu.com/ubuntu focal-security main universe",
    ]


@needs_keyring
def test_the_pinned_keyring_holds_exactly_the_pinned_keys(tmp_path: Path) -> None:
    out = platforms.pinned_keyring(DEBIAN, tmp_path / "k.gpg")
    assert platforms.fingerprints(out) == set(DEBIAN.keys)
    # The host's keyring holds more (older releases' keys): not passed on.
    assert len(platforms.fingerprints(DEBIAN.host_keyring)) > len(DEBIAN.keys)


@needs_keyring
def test_a_keyring_without_a_pinned_key_is_refused(tmp_path: Path) -> None:
    wrong = dataclasses.replace(DEBIAN, keys=(*DEBIAN.keys, "0" * 40))
    with pytest.raises(LabError, match="refusing to trust it"):
        platforms.pinned_keyring(wrong, tmp_path / "k.gpg")
