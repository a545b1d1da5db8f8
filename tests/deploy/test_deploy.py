"""Deploying onto the lab: idempotent, and a config that fails validation never goes live."""

from __future__ import annotations

import re

from tests.conftest import REPO, pyinfra

SSHD_DROPIN = "/etc/ssh/sshd_config.d/10-mailcluster.conf"


def changed_operations(output: str) -> int:
    """Operations that changed something, from pyinfra's results table ('Grand total')."""
    row = next(line for line in output.splitlines() if line.strip().startswith("Grand total"))
    hosts, success, error, no_change = row.split()[2:6]
    assert error == "-", row
    return 0 if success == "-" else int(success)


def test_a_second_deploy_with_nothing_changed_reports_no_changes() -> None:
    first = pyinfra("inventory/lab.py", "deploy.py")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = pyinfra("inventory/lab.py", "deploy.py")
    assert second.returncode == 0, second.stderr[-3000:]
    out = second.stdout + second.stderr
    assert changed_operations(out) == 0, re.findall(r".*\|.*\s\d+\s.*", out)


def test_a_template_failing_validation_leaves_the_live_file_and_service(lab, lab_ssh) -> None:
    name = lab["hosts"][0]["name"]
    before = lab_ssh(name, f"sha256sum {SSHD_DROPIN}").stdout
    broken = REPO / "tests" / "fixtures" / "broken_templates" / "sshd"
    proc = pyinfra(
        "inventory/lab.py",
        "deploy.py",
        "--limit",
        name,
        env={"MAILCLUSTER_TEMPLATE_PATH": str(broken)},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"validation failed, {SSHD_DROPIN} left unchanged" in out
    assert lab_ssh(name, f"sha256sum {SSHD_DROPIN}").stdout == before
    assert lab_ssh(name, f"ls {SSHD_DROPIN}.mailcluster-new", check=False).returncode != 0
    assert lab_ssh(name, "systemctl is-active ssh").stdout.strip() == "active"
    assert "passwordauthentication no" in lab_ssh(name, "sshd -T").stdout


def test_a_broken_dovecot_template_stops_the_run_and_dovecot_keeps_answering(lab, lab_ssh) -> None:
    import imaplib

    name = next(h for h in lab["hosts"] if "mail" in h["groups"])["name"]
    address = next(h for h in lab["hosts"] if h["name"] == name)["address"]
    before = lab_ssh(name, "sha256sum /etc/dovecot/dovecot.conf").stdout
    broken = REPO / "tests" / "fixtures" / "broken_templates" / "dovecot-conf"
    proc = pyinfra(
        "inventory/lab.py",
        "deploy.py",
        "--limit",
        name,
        env={"MAILCLUSTER_TEMPLATE_PATH": str(broken)},
    )
    assert proc.returncode != 0
    assert (
        "validation failed, /etc/dovecot/dovecot.conf left unchanged" in proc.stdout + proc.stderr
    )
    assert lab_ssh(name, "sha256sum /etc/dovecot/dovecot.conf").stdout == before
    client = imaplib.IMAP4(address, 143, timeout=10)
    assert "AUTH=CRAM-MD5" in client.capabilities
    client.shutdown()


def test_a_broken_exim_template_stops_the_run_and_exim_keeps_answering(lab, lab_ssh) -> None:
    import smtplib

    name = next(h for h in lab["hosts"] if "mail" in h["groups"])["name"]
    address = next(h for h in lab["hosts"] if h["name"] == name)["address"]
    before = lab_ssh(name, "sha256sum /etc/exim4/exim4.conf").stdout
    broken = REPO / "tests" / "fixtures" / "broken_templates" / "exim-conf"
    proc = pyinfra(
        "inventory/lab.py",
        "deploy.py",
        "--limit",
        name,
        env={"MAILCLUSTER_TEMPLATE_PATH": str(broken)},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "validation failed, /etc/exim4/exim4.conf left unchanged" in out
    assert "smtp_accept_maximum" in out  # the error names the bad option
    assert lab_ssh(name, "sha256sum /etc/exim4/exim4.conf").stdout == before
    with smtplib.SMTP(address, 25, timeout=10) as smtp:
        assert smtp.ehlo()[0] == 250


def test_a_redeploy_keeps_webmail_users_logged_in(lab) -> None:
    from tests.e2e.webmail_http import WebmailSession

    account = lab["accounts"][0]
    web = WebmailSession(lab)
    web.login(account["user"], account["password"])
    assert web.logged_in_as() == account["user"]
    proc = pyinfra("inventory/lab.py", "deploy.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The same browser session (cookies) is still a logged-in session: the des_key and
    # the session table survived the deploy.
    assert web.logged_in_as() == account["user"]
