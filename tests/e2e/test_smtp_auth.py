"""SMTP as SERVICE.md promises it, spoken by a real client from the lab host.

The same SSL/auth matrix as IMAP (25: CRAM-MD5 only until STARTTLS; 587 after STARTTLS
and 465: PLAIN, LOGIN and CRAM-MD5) for every user through every mail node; submission
only after AUTH; an authenticated user's mail to another domain reaches the smarthost
(the lab's sink); TLS 1.2 as the floor on every port.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ALLOWED_CELLS, lab_state_hosts
from tests.e2e.smtp_client import (
    PORTS,
    Reply,
    advertised_auth,
    authenticate,
    bad_client,
    close,
    connect,
    envelope,
    node_address,
    open_session,
    password_of,
    s_client,
)

MAIL_NODES = [h["name"] for h in lab_state_hosts() if "mail" in h["groups"]] or ["(no lab)"]
USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
OUTSIDE = "someone@example.org"


def is_refusal(reply: Reply) -> bool:
    return 500 <= reply[0] < 600


# -- the matrix ---------------------------------------------------------------------------


@pytest.mark.parametrize("node", MAIL_NODES)
def test_port_25_without_tls_advertises_starttls_and_only_cram_md5(lab, node) -> None:
    client = open_session(node_address(lab, node), "plain", lab)
    try:
        assert client.has_extn("starttls"), client.ehlo_resp
        assert advertised_auth(client) == ["CRAM-MD5"], client.ehlo_resp
    finally:
        close(client)


@pytest.mark.parametrize("node", MAIL_NODES)
@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_submission_over_tls_advertises_plain_login_and_cram_md5(lab, node, mode) -> None:
    client = open_session(node_address(lab, node), mode, lab)
    try:
        assert sorted(advertised_auth(client)) == ["CRAM-MD5", "LOGIN", "PLAIN"], client.ehlo_resp
        # Already encrypted: STARTTLS is not offered a second time.
        assert not client.has_extn("starttls"), client.ehlo_resp
    finally:
        close(client)


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("node", MAIL_NODES)
@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
def test_plaintext_auth_without_tls_is_refused(lab, node, user, mechanism) -> None:
    # Forced although not advertised, with the right password: a refusal, never a 235.
    client = open_session(node_address(lab, node), "plain", lab)
    try:
        reply = authenticate(client, mechanism, user, password_of(lab, user))
        assert reply[0] != 235 and is_refusal(reply), reply
    finally:
        close(client)


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("node", MAIL_NODES)
@pytest.mark.parametrize("mode,mechanism", ALLOWED_CELLS)
def test_allowed_cells_accept_the_right_password(lab, node, user, mode, mechanism) -> None:
    client = open_session(node_address(lab, node), mode, lab)
    try:
        reply = authenticate(client, mechanism, user, password_of(lab, user))
        assert reply[0] == 235, reply
    finally:
        close(client)


def attempt(lab: dict[str, Any], address: str, mode: str, mechanism: str, user: str) -> Reply:
    # Dovecot's failure delay and penalty (up to ~15 s) come on top: a generous timeout.
    client = open_session(address, mode, lab, source=bad_client(lab), timeout=90)
    try:
        return authenticate(client, mechanism, user, "wrong-password")
    finally:
        close(client)


@pytest.mark.parametrize("node", MAIL_NODES)
def test_allowed_cells_refuse_a_wrong_password(lab, node) -> None:
    # One user local to this node and one proxied, every cell; concurrently, since each
    # failure costs the auth penalty delay. All results are checked, so none hides another.
    # At most 8 at once: a small node (2 GB) takes 10 connections per client address.
    address = node_address(lab, node)
    cases = [(m, mech, u) for m, mech in ALLOWED_CELLS for u in (USERS[0], USERS[1])]
    with ThreadPoolExecutor(min(len(cases), 8)) as pool:
        results = list(pool.map(lambda c: attempt(lab, address, *c), cases))
    failed = {c: r for c, r in zip(cases, results, strict=True) if r[0] != 535}
    assert failed == {}


# -- submission needs AUTH ------------------------------------------------------------------


@pytest.mark.parametrize("node", MAIL_NODES)
@pytest.mark.parametrize("mode", ["starttls", "tls"])
@pytest.mark.parametrize("recipient", ["local", "outside"])
def test_submission_ports_refuse_mail_without_auth_at_rcpt(lab, node, mode, recipient) -> None:
    to = f"alice@{lab['domain']}" if recipient == "local" else OUTSIDE
    client = open_session(node_address(lab, node), mode, lab)
    try:
        mail, rcpt = envelope(client, f"bob@{lab['domain']}", to)
        assert mail[0] == 250, mail
        assert is_refusal(rcpt), rcpt
        assert f"port {PORTS[mode]}" in rcpt[1], rcpt
    finally:
        close(client)


def sink_message(lab: dict[str, Any], message_id: str, deadline: float) -> str:
    """The sink's copy of the message with this Message-ID, waiting for it until deadline."""
    new = Path(lab["sink"]) / "new"
    needle = f"Message-ID: {message_id}".encode()
    while True:
        for path in new.iterdir():
            data = path.read_bytes()
            if needle in data:
                return data.decode(errors="replace")
        assert time.monotonic() < deadline, f"{message_id} did not reach the sink"
        time.sleep(0.2)


@pytest.mark.parametrize("node", MAIL_NODES)
@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_an_authenticated_user_can_send_to_an_outside_address(lab, node, mode) -> None:
    user = "carol"
    sender = f"{user}@{lab['domain']}"
    message_id = f"<smtp-test-{uuid.uuid4().hex}@{lab['domain']}>"
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, OUTSIDE, f"outbound via {node} {mode}"
    msg["Message-ID"] = message_id
    msg.set_content("An authenticated submission for another domain.\n")

    client = open_session(node_address(lab, node), mode, lab)
    try:
        reply = authenticate(client, "PLAIN", user, password_of(lab, user))
        assert reply[0] == 235, reply
        refused = client.sendmail(sender, [OUTSIDE], msg.as_bytes())
        assert refused == {}
    finally:
        close(client)

    copy = sink_message(lab, message_id, time.monotonic() + 60)
    assert f"X-Sink-Mail-From: <{sender}>" in copy
    assert f"X-Sink-Rcpt-To: <{OUTSIDE}>" in copy


# -- TLS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("node", MAIL_NODES)
@pytest.mark.parametrize("port", [465, 587, 25])
@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_tls_before_1_2_is_refused(lab, node, port, version) -> None:
    # SECLEVEL=0 so that the client itself is willing to offer the old protocol.
    proc = s_client(node_address(lab, node), port, version, "-cipher", "DEFAULT@SECLEVEL=0")
    # No cipher agreed: the server ended the handshake.
    assert "Cipher is (NONE)" in proc.stdout, proc.stdout[-400:]


@pytest.mark.parametrize("node", MAIL_NODES)
@pytest.mark.parametrize("port", [465, 587, 25])
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_tls_1_2_and_1_3_verify_against_the_site_ca(lab, node, port, version) -> None:
    address = node_address(lab, node)
    proc = s_client(
        address, port, version, "-CAfile", lab["ca_cert"], "-verify_ip", address,
        "-verify_return_error",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-400:]
    assert "Verify return code: 0 (ok)" in proc.stdout
    expected = "TLSv1.2" if version == "-tls1_2" else "TLSv1.3"
    assert f"Protocol  : {expected}" in proc.stdout or f"New, {expected}" in proc.stdout, (
        proc.stdout[-600:]
    )


@pytest.mark.parametrize("node", MAIL_NODES)
def test_smtplib_verifies_the_certificate_by_address_on_465(lab, node) -> None:
    client = connect(node_address(lab, node), 465, lab)
    try:
        assert client.sock is not None
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[attr-defined]
    finally:
        close(client)
