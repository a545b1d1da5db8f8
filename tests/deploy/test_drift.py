"""Drift: a managed file edited by hand shows up in a dry run as the exact diff the
real run would apply, the dry run changes nothing, and the real run restores it."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import REPO, pyinfra

LIVE = "/etc/dovecot/dovecot.conf"
TEMPLATE = "templates/dovecot/dovecot.conf.j2"


def dry_run(name: str) -> str:
    import os
    import subprocess
    import sys

    # No -y: pyinfra detects changes only when it is asked to confirm them.
    exe = [str(Path(sys.executable).with_name("pyinfra"))]
    proc = subprocess.run(
        [*exe, "inventory/lab.py", "deploy.py", "--dry", "--diff", "--limit", name],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_a_hand_edit_is_shown_by_the_dry_run_and_undone_by_the_real_run(lab, lab_ssh) -> None:
    name = next(h["name"] for h in lab["hosts"] if "mail" in h["groups"])
    original = lab_ssh(name, f"cat {LIVE}").stdout
    lab_ssh(
        name,
        f"sed -i 's/^  mail_max_userip_connections = .*/  mail_max_userip_connections = 3/' {LIVE}",
    )
    lab_ssh(name, f"echo 'mail_debug = yes' >> {LIVE}")
    edited = lab_ssh(name, f"cat {LIVE}").stdout
    assert edited != original

    out = dry_run(name)
    assert f"Will modify {LIVE}" in out
    assert f"--- {LIVE} (live)" in out and f"+++ {LIVE} ({TEMPLATE})" in out
    assert "-  mail_max_userip_connections = 3" in out
    assert "+  mail_max_userip_connections = 20" in out
    assert "-mail_debug = yes" in out
    assert lab_ssh(name, f"cat {LIVE}").stdout == edited  # a dry run changes nothing

    real = pyinfra("inventory/lab.py", "deploy.py", "--limit", name)
    assert real.returncode == 0, real.stderr[-3000:]
    assert lab_ssh(name, f"cat {LIVE}").stdout == original
    assert dry_run(name).count("Will modify") == 0
