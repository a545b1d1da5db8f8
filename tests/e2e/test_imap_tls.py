"""IMAP's TLS from outside: the certificate names, and TLS 1.2 as the floor."""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest

from tests.conftest import lab_state_hosts

MAIL = [h for h in lab_state_hosts() if "mail" in h["groups"]] or [{"name": "-", "address": "-"}]


@pytest.mark.parametrize("node", MAIL, ids=lambda h: h["name"])
def test_the_certificate_covers_the_imap_service_name_and_the_node_name(lab, node) -> None:
    ctx = ssl.create_default_context(cafile=lab["ca_cert"])
    for name in (f"imap.{lab['domain']}", f"{node['name']}.{lab['domain']}"):
        with (
            socket.create_connection((node["address"], 993), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=name) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def s_client(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"{address}:993", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("node", MAIL, ids=lambda h: h["name"])
@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_tls_before_1_2_is_refused(node, version: str) -> None:
    # SECLEVEL=0 so that the client itself is willing to offer the old protocol.
    proc = s_client(node["address"], version, "-cipher", "DEFAULT@SECLEVEL=0")
    # No cipher agreed: the server ended the handshake.
    assert "Cipher is (NONE)" in proc.stdout, proc.stdout[-400:]


@pytest.mark.parametrize("node", MAIL, ids=lambda h: h["name"])
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_tls_1_2_and_1_3_verify_against_the_site_ca(lab, node, version: str) -> None:
    proc = s_client(node["address"], version, "-CAfile", lab["ca_cert"], "-verify_return_error")
    assert proc.returncode == 0, proc.stderr[-400:]
    assert "Verify return code: 0 (ok)" in proc.stdout
