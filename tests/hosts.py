"""Commands on the cluster's machines: the one way the tests and the benchmarks run a
shell command on a lab (or Vagrant) machine, over ssh with the target's ``ssh_config``.

Tests reach it through the ``lab_ssh`` fixture (tests/conftest.py), or use testinfra's
``host`` (tests/infra); the scripts under bench/ import it (bench/labinfo.py puts the
repository on ``sys.path``). No pytest here: the benchmarks run without it.
"""

from __future__ import annotations

import os
import subprocess


class CommandFailed(AssertionError):
    """A command exited non-zero on a machine; the message names the machine, the
    command, its exit status and its stderr. An AssertionError: a test shows it as a
    failed check."""


def run(
    ssh_config: str | os.PathLike[str],
    name: str,
    command: str,
    check: bool = True,
    input: str | None = None,
    timeout: float | None = 120,
) -> subprocess.CompletedProcess[str]:
    """Run the shell command line ``command`` on machine ``name`` (as root: the
    ssh_config's user), its output captured as text.

    ``check``: raise CommandFailed when it exits non-zero. ``input``: its stdin.
    ``timeout``: seconds, after which ssh is killed and subprocess.TimeoutExpired is
    raised (whatever ``check`` says); None waits as long as it takes. BatchMode: a
    prompt (password, unknown host key) is a failure, never a hang.
    """
    proc = subprocess.run(
        ["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", name, command],
        capture_output=True,
        text=True,
        errors="replace",
        input=input,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise CommandFailed(f"{name}: {command!r} failed ({proc.returncode}): {proc.stderr}")
    return proc
