"""What Exim writes to its log must not give away a password."""

from __future__ import annotations

import base64
import smtplib
import time
import uuid

import pytest

from tests.conftest import lab_state_hosts

MAIL = [h for h in lab_state_hosts() if "mail" in h["groups"]] or [{"name": "-", "address": "-"}]
LOGS = ["/var/log/exim4/mainlog", "/var/log/exim4/rejectlog"]


def read_log(lab_ssh, node: str, path: str) -> str:  # noqa: ANN001
    """The whole log; a missing, empty or unreadable one fails (it would hide anything)."""
    proc = lab_ssh(node, f"test -s {path} && cat {path}", check=False)
    assert proc.returncode == 0, f"{node}: {path} is missing, empty or unreadable. {proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("node", MAIL, ids=lambda h: h["name"])
def test_a_refused_auth_plain_is_not_logged_with_its_credentials(lab, lab_ssh, node) -> None:
    account = lab["accounts"][0]
    secret = f"\0{account['user']}\0{account['password']}".encode()
    token = base64.b64encode(secret).decode()
    client = lab["client_addresses"][1]
    # The same session then has a relay refused, which Exim always logs (to both logs):
    # proof that this session's traffic reached the logs read below.
    sender = f"privacy-{uuid.uuid4().hex}@example.org"
    with smtplib.SMTP(node["address"], 25, timeout=15, source_address=(client, 0)) as smtp:
        smtp.ehlo("client.example.org")
        code, _ = smtp.docmd("AUTH", f"PLAIN {token}")  # refused: no TLS on port 25
        assert code >= 500
        assert smtp.mail(sender)[0] == 250
        code, reply = smtp.rcpt("someone@example.org")
        assert code == 550 and b"Relay not permitted" in reply, (code, reply)

    deadline = time.monotonic() + 15
    while True:
        logs = {path: read_log(lab_ssh, node["name"], path) for path in LOGS}
        if all(sender in text for text in logs.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for path, text in logs.items():
        ours = [line for line in text.splitlines() if f"F=<{sender}>" in line]
        assert ours, f"{node['name']}: {path} has no line of this test's session"
        assert any(f"[{client}]" in line and "Relay not permitted" in line for line in ours), ours
        assert token not in text, f"{path} holds the AUTH PLAIN token"
        assert account["password"] not in text, f"{path} holds the password"
