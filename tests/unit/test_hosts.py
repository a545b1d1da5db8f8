"""tests/hosts.py, the one way tests and benchmarks run a command on a machine: against a
stand-in ``ssh`` on PATH that records its arguments and runs the command locally."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import hosts

FAKE_SSH = """#!/bin/sh
printf '%s\\n' "$@" > "$(dirname "$0")/argv"
exec sh -c "$6"
"""


@pytest.fixture
def ssh_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return tmp_path / "ssh_config"


def test_runs_through_the_ssh_config_never_prompting(ssh_config: Path) -> None:
    proc = hosts.run(ssh_config, "mail01", "echo out; echo err >&2")
    argv = (ssh_config.parent / "bin" / "argv").read_text().splitlines()
    assert argv == [
        "-F",
        str(ssh_config),
        "-o",
        "BatchMode=yes",
        "mail01",
        "echo out; echo err >&2",
    ]
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "out\n", "err\n")


def test_input_is_the_commands_stdin(ssh_config: Path) -> None:
    assert hosts.run(ssh_config, "mail01", "cat", input="a\nb\n").stdout == "a\nb\n"


def test_a_failure_names_the_machine_the_command_and_its_stderr(ssh_config: Path) -> None:
    with pytest.raises(AssertionError) as failed:
        hosts.run(ssh_config, "mail02", "echo no such unit >&2; exit 5")
    assert isinstance(failed.value, hosts.CommandFailed)
    assert str(failed.value) == (
        "mail02: 'echo no such unit >&2; exit 5' failed (5): no such unit\n"
    )


def test_unchecked_a_failure_is_returned(ssh_config: Path) -> None:
    proc = hosts.run(ssh_config, "mail01", "exit 3", check=False)
    assert proc.returncode == 3


def test_a_timeout_raises_checked_or_not(ssh_config: Path) -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        hosts.run(ssh_config, "mail01", "sleep 5", check=False, timeout=0.5)


def test_output_that_is_not_utf8_is_kept_not_fatal(ssh_config: Path) -> None:
    assert hosts.run(ssh_config, "mail01", r"printf 'a\377b'").stdout == "a\ufffdb"
