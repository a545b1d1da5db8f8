"""roles/base.py announce_address: the shell that announces a host's address once.

Run here with bash and the lab host's real `ip`; `arping` is a stub that records its
arguments (a real one would send on the lab host's network)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mailcluster.roles import base


def run(script: str, tmp_path: Path, arping_rc: int = 0) -> subprocess.CompletedProcess[str]:
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "arping").write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path}/arping.args\nexit {arping_rc}\n'
    )
    (stub / "arping").chmod(0o755)
    script = script.replace(base.ANNOUNCED_DIR, str(tmp_path / "announced"))
    return subprocess.run(
        ["bash", "-c", f'PATH={stub}:"$PATH"; {script}'],
        capture_output=True,
        text=True,
        check=False,
    )


def test_an_address_this_host_has_is_announced_on_its_device_and_recorded(tmp_path: Path) -> None:
    proc = run(base.announce_address("127.0.0.1"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "arping.args").read_text().split() == [
        "-q",
        "-U",
        "-c",
        "3",
        "-w",
        "4",
        "-I",
        "lo",
        "127.0.0.1",
    ]
    assert (tmp_path / "announced" / "127.0.0.1").exists()


def test_an_address_this_host_lacks_stops_with_its_name_and_records_nothing(
    tmp_path: Path,
) -> None:
    proc = run(base.announce_address("192.0.2.77"), tmp_path)
    assert proc.returncode == 1
    assert "192.0.2.77 is not an address of this host" in proc.stderr
    assert not (tmp_path / "arping.args").exists()
    assert not (tmp_path / "announced").exists()


def test_no_replies_from_an_older_arping_is_still_an_announcement(tmp_path: Path) -> None:
    """iputils 20190709 (Ubuntu 20.04) exits 1 after -U: no replies, none expected."""
    proc = run(base.announce_address("127.0.0.1"), tmp_path, arping_rc=1)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "announced" / "127.0.0.1").exists()


def test_an_arping_error_fails_the_operation_and_records_nothing(tmp_path: Path) -> None:
    proc = run(base.announce_address("127.0.0.1"), tmp_path, arping_rc=2)
    assert proc.returncode == 2
    assert not (tmp_path / "announced").exists()
