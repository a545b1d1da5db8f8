"""The rolling deploy: batches of mail nodes, each checked with real IMAP and SMTP
logins; the first unhealthy batch stops the rollout and the rest stay untouched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailcluster.site import load
from tests.conftest import REPO, pyinfra

DOVECOT_CONF = "/etc/dovecot/dovecot.conf"


def rollout(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "mailcluster.rollout", "-i", "inventory/lab.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=1200,
    )


def unhealthy_templates(tmp: Path) -> Path:
    """dovecot.conf that Dovecot accepts (doveconf validates it) but with which nobody
    can log in: the users' passdb points at a file that does not exist."""
    real = (REPO / "templates" / "dovecot" / "dovecot.conf.j2").read_text()
    broken = real.replace(
        "args = scheme=CRAM-MD5 {{ passdb }}", "args = scheme=CRAM-MD5 /nonexistent"
    )
    assert broken != real, "the template changed: update this fixture's replacement"
    (tmp / "dovecot").mkdir()
    (tmp / "dovecot" / "dovecot.conf.j2").write_text(broken)
    return tmp


@pytest.fixture
def converge_after():
    yield
    proc = pyinfra("inventory/lab.py", "deploy.py")
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_rollout_changes_every_host_batch_by_batch_when_healthy(lab) -> None:
    proc = rollout()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    mail = [h["name"] for h in lab["hosts"] if "mail" in h["groups"]]
    for name in mail:  # 25% of 2 mail nodes: one node per batch
        assert f"deploying {name}\n" in out
    assert "all healthy" in out


def test_an_unhealthy_batch_stops_the_rollout_and_the_rest_stay_untouched(
    lab, lab_ssh, tmp_path, converge_after
) -> None:
    site = load(lab["site_file"])
    mail = [h.name for h in site.in_group("mail")]
    first, rest = mail[0], mail[1:]
    before = {n: lab_ssh(n, f"sha256sum {DOVECOT_CONF}").stdout for n in mail}

    proc = rollout(
        "--check-timeout",
        "10",
        env={"MAILCLUSTER_TEMPLATE_PATH": str(unhealthy_templates(tmp_path))},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert f"unhealthy after deploy ({first}: IMAP login" in out
    assert f"not touched: {', '.join(rest)}" in out
    # The bad batch got the change; the others still run what they ran.
    assert lab_ssh(first, f"sha256sum {DOVECOT_CONF}").stdout != before[first]
    for name in rest:
        assert lab_ssh(name, f"sha256sum {DOVECOT_CONF}").stdout == before[name]
        assert f"deploying {name}" not in out


def test_a_rollout_refuses_to_start_on_an_unhealthy_cluster(lab, lab_ssh, converge_after) -> None:
    node = next(h["name"] for h in lab["hosts"] if "mail" in h["groups"])
    lab_ssh(node, "systemctl stop dovecot")
    proc = rollout("--check-timeout", "5")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "not starting: the cluster is unhealthy already" in out
    assert "deploying" not in out
