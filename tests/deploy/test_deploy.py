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


def deploy_with_broken_template(lab_ssh, name: str, fixture: str, live: str) -> str:  # noqa: ANN001
    """Deploy ``name`` with one template replaced by a broken one (a folder under
    tests/fixtures/broken_templates); check the run stopped with the live file untouched
    and no candidate left behind. Returns the run's output."""
    before = lab_ssh(name, f"sha256sum {live}").stdout
    broken = REPO / "tests" / "fixtures" / "broken_templates" / fixture
    proc = pyinfra(
        "inventory/lab.py",
        "deploy.py",
        "--limit",
        name,
        env={"MAILCLUSTER_TEMPLATE_PATH": str(broken)},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"validation failed, {live} left unchanged" in out
    assert lab_ssh(name, f"sha256sum {live}").stdout == before
    assert lab_ssh(name, f"ls {live}.mailcluster-new", check=False).returncode != 0
    return out


def first_mail_node(lab) -> tuple[str, str]:  # noqa: ANN001
    node = next(h for h in lab["hosts"] if "mail" in h["groups"])
    return node["name"], node["address"]


def test_a_template_failing_validation_leaves_the_live_file_and_service(lab, lab_ssh) -> None:
    name = lab["hosts"][0]["name"]
    deploy_with_broken_template(lab_ssh, name, "sshd", SSHD_DROPIN)
    assert lab_ssh(name, "systemctl is-active ssh").stdout.strip() == "active"
    assert "passwordauthentication no" in lab_ssh(name, "sshd -T").stdout


def test_a_broken_dovecot_template_stops_the_run_and_dovecot_keeps_answering(lab, lab_ssh) -> None:
    import imaplib

    name, address = first_mail_node(lab)
    deploy_with_broken_template(lab_ssh, name, "dovecot-conf", "/etc/dovecot/dovecot.conf")
    client = imaplib.IMAP4(address, 143, timeout=10)
    assert "AUTH=CRAM-MD5" in client.capabilities
    client.shutdown()


def test_a_broken_exim_template_stops_the_run_and_exim_keeps_answering(lab, lab_ssh) -> None:
    import smtplib

    name, address = first_mail_node(lab)
    out = deploy_with_broken_template(lab_ssh, name, "exim-conf", "/etc/exim4/exim4.conf")
    assert "smtp_accept_maximum" in out  # the error names the bad option
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


def test_a_reload_left_pending_by_a_stopped_run_happens_on_the_next_run(lab, lab_ssh) -> None:
    # A run that replaced dovecot.conf and then stopped (an error on another host or file,
    # a lost connection) leaves the reload's marker; the next run must reload, although
    # nothing changes any more.
    name, _ = first_mail_node(lab)
    marker = "/var/lib/mailcluster/pending/dovecot.reload"
    pid = lab_ssh(name, "systemctl show -p MainPID --value dovecot").stdout
    lab_ssh(name, f"mkdir -p /var/lib/mailcluster/pending && touch {marker}")
    proc = pyinfra("inventory/lab.py", "deploy.py", "--limit", name)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert changed_operations(proc.stdout + proc.stderr) == 1
    assert "Reload Dovecot (pending from an earlier run)" in proc.stdout + proc.stderr
    assert lab_ssh(name, f"test -e {marker}", check=False).returncode != 0
    assert lab_ssh(name, "systemctl show -p MainPID --value dovecot").stdout == pid  # reloaded
    log = lab_ssh(name, "journalctl -u dovecot --since '-2min' --no-pager").stdout
    assert "SIGHUP received - reloading configuration" in log
