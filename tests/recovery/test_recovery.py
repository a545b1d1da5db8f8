"""The lab survives a killed run: `up` after SIGKILL works, `down` leaves nothing behind.

Destructive: it kills and rebuilds the lab, then deploys again, so it runs last
(`make test` runs it as its own stage).
"""

from __future__ import annotations

import json
import subprocess
import time

from mailcluster.lab import config, core
from mailcluster.lab.system import kill_all, processes_under
from tests.conftest import lab_cli, pyinfra


def test_up_recovers_after_every_lab_process_was_killed_with_sigkill() -> None:
    topology = json.loads(config.STATE_FILE.read_text())["topology"]
    victims = processes_under(str(config.VAR))
    assert victims, "no lab processes to kill: is the lab up?"
    kill_all(victims)
    assert lab_cli("status").returncode != 0

    started = time.monotonic()
    proc = lab_cli("up", "--topology", topology)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 60, "a warm up should take seconds"
    assert lab_cli("status").returncode == 0


def test_down_leaves_nothing_behind_and_up_works_again() -> None:
    topology = json.loads(config.STATE_FILE.read_text())["topology"]
    proc = lab_cli("down")
    assert proc.returncode == 0, proc.stderr
    assert core.leftovers() == []
    assert not config.MACHINES.exists()
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert "mclab" not in links
    assert lab_cli("status").returncode == 3
    assert lab_cli("down").returncode == 0  # idempotent

    proc = lab_cli("up", "--topology", topology)
    assert proc.returncode == 0, proc.stderr


def test_the_rebuilt_lab_deploys_cleanly_and_idempotently() -> None:
    first = pyinfra("inventory/lab.py", "deploy.py")
    out = first.stdout + first.stderr
    problems = [ln for ln in out.splitlines() if "rror" in ln and "|" not in ln]
    assert first.returncode == 0, "\n".join(problems[-40:]) or out[-3000:]
    second = pyinfra("inventory/lab.py", "deploy.py")
    from tests.deploy.test_deploy import changed_operations

    assert changed_operations(second.stdout + second.stderr) == 0
