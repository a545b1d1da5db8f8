"""SSH from outside (the lab host): keys only, never a password prompt."""

from __future__ import annotations

import socket
import subprocess

import paramiko
import pytest

from tests.conftest import lab_state_hosts


@pytest.mark.parametrize("name", [h["name"] for h in lab_state_hosts()] or ["(lab is not up)"])
def test_sshd_offers_only_publickey_from_outside(lab, name: str) -> None:
    address = next(h["address"] for h in lab["hosts"] if h["name"] == name)
    sock = socket.create_connection((address, 22), timeout=10)
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=10)
        with pytest.raises(paramiko.BadAuthenticationType) as refused:
            transport.auth_password("root", "not-a-key")
        assert refused.value.allowed_types == ["publickey"]
    finally:
        transport.close()


def test_ssh_without_a_key_is_denied(lab) -> None:
    address = lab["hosts"][0]["address"]
    proc = subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            f"root@{address}",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 255
    assert "Permission denied (publickey)" in proc.stderr
