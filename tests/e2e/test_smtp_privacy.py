"""What Exim writes to its log must not give away a password."""

from __future__ import annotations

import base64
import smtplib

import pytest

from tests.conftest import lab_state_hosts

MAIL = [h for h in lab_state_hosts() if "mail" in h["groups"]] or [{"name": "-", "address": "-"}]


@pytest.mark.parametrize("node", MAIL, ids=lambda h: h["name"])
def test_a_refused_auth_plain_is_not_logged_with_its_credentials(lab, lab_ssh, node) -> None:
    account = lab["accounts"][0]
    secret = f"\0{account['user']}\0{account['password']}".encode()
    token = base64.b64encode(secret).decode()
    with smtplib.SMTP(
        node["address"], 25, timeout=15, source_address=(lab["client_addresses"][1], 0)
    ) as smtp:
        smtp.ehlo("client.example.org")
        code, _ = smtp.docmd("AUTH", f"PLAIN {token}")  # refused: no TLS on port 25
        assert code >= 500
    logs = lab_ssh(
        node["name"], "cat /var/log/exim4/mainlog /var/log/exim4/rejectlog 2>/dev/null || true"
    ).stdout
    assert token not in logs
    assert account["password"] not in logs
