"""SMTP as a mail client (or a spammer) speaks it, from the lab host (never from inside a
machine).

Every exchange returns the server's reply (code, text) instead of raising, so that a test
can assert on exactly what the server said. Commands whose arguments must go out byte for
byte (address tricks, forced AUTH mechanisms) are sent with ``docmd``: smtplib would
otherwise parse and "repair" the addresses.
"""

from __future__ import annotations

import base64
import hmac
import smtplib
import ssl
import subprocess
from typing import Any

from tests.conftest import node_address, password_of, patience  # noqa: F401 - re-exported

TIMEOUT = patience(30)
# The name the lab host gives in EHLO (smtplib's default is its own guess).
CLIENT_NAME = "lab-client.example.org"
# Ports by mode: "plain" (25, no TLS), "starttls" (587 + STARTTLS), "tls" (465, implicit).
PORTS = {"plain": 25, "starttls": 587, "tls": 465}

Reply = tuple[int, str]


def context(lab: dict[str, Any]) -> ssl.SSLContext:
    """Verifies the server against the lab CA, by address (certificates carry the IPs)."""
    return ssl.create_default_context(cafile=lab["ca_cert"])


def connect(
    address: str,
    port: int,
    lab: dict[str, Any],
    source: str | None = None,
    timeout: float = TIMEOUT,
) -> smtplib.SMTP:
    """465: implicit TLS, anything else: plain; ``source``: one of the lab host's addresses.

    No EHLO yet (the caller may want to say HELO, or a particular name)."""
    src = (source, 0) if source else None
    if port == 465:
        return smtplib.SMTP_SSL(
            address,
            port,
            local_hostname=CLIENT_NAME,
            timeout=timeout,
            source_address=src,
            context=context(lab),
        )
    return smtplib.SMTP(
        address, port, local_hostname=CLIENT_NAME, timeout=timeout, source_address=src
    )


def open_session(
    address: str,
    mode: str,
    lab: dict[str, Any],
    source: str | None = None,
    timeout: float = TIMEOUT,
) -> smtplib.SMTP:
    """mode: "plain" (25), "starttls" (587 + STARTTLS) or "tls" (465); EHLO said."""
    client = connect(address, PORTS[mode], lab, source, timeout)
    try:
        code, text = client.ehlo()
        assert code == 250, (code, text)
        if mode == "starttls":
            client.starttls(context=context(lab))
            code, text = client.ehlo()
            assert code == 250, (code, text)
    except BaseException:
        client.close()
        raise
    return client


def advertised_auth(client: smtplib.SMTP) -> list[str]:
    """The SASL mechanisms of the last EHLO (empty when AUTH is not advertised)."""
    return client.esmtp_features.get("auth", "").upper().split()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _reply(code: int, text: bytes) -> Reply:
    return code, text.decode(errors="replace")


def authenticate(client: smtplib.SMTP, mechanism: str, user: str, password: str) -> Reply:
    """AUTH ``mechanism`` whether advertised or not; the server's final reply.

    235: accepted; anything else: refused (504 unknown mechanism, 535 wrong credentials,
    538 encryption required...). If the server asks (334), the dialogue goes on as a
    client would, so a server that would accept is never mistaken for one that refuses.
    """
    if mechanism == "PLAIN":
        code, text = client.docmd("AUTH", "PLAIN " + _b64(f"\0{user}\0{password}"))
        return _reply(code, text)
    if mechanism == "LOGIN":
        code, text = client.docmd("AUTH", "LOGIN")
        for answer in (user, password):
            if code != 334:
                break
            code, text = client.docmd(_b64(answer))
        return _reply(code, text)
    if mechanism == "CRAM-MD5":
        code, text = client.docmd("AUTH", "CRAM-MD5")
        if code == 334:
            challenge = base64.b64decode(text)
            digest = hmac.new(password.encode(), challenge, "md5").hexdigest()
            code, text = client.docmd(_b64(f"{user} {digest}"))
        return _reply(code, text)
    raise ValueError(mechanism)


def mail_from(client: smtplib.SMTP, sender: str) -> Reply:
    """MAIL FROM:<sender>, sent verbatim ("" is the null sender <>)."""
    return _reply(*client.docmd("MAIL", f"FROM:<{sender}>"))


def rcpt_to(client: smtplib.SMTP, recipient: str) -> Reply:
    """RCPT TO:<recipient>, sent verbatim (source routes, quoted local parts...)."""
    return _reply(*client.docmd("RCPT", f"TO:<{recipient}>"))


def envelope(client: smtplib.SMTP, sender: str, recipient: str) -> tuple[Reply, Reply]:
    """MAIL and RCPT, then RSET: never DATA, so nothing is ever sent anywhere."""
    try:
        return mail_from(client, sender), rcpt_to(client, recipient)
    finally:
        client.rset()


def close(client: smtplib.SMTP) -> None:
    """QUIT if the server still listens; the socket is closed either way."""
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


def s_client(address: str, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``openssl s_client`` against the node (465: implicit TLS; 25/587: -starttls smtp)."""
    starttls = [] if port == 465 else ["-starttls", "smtp"]
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"{address}:{port}", *starttls, *args],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )


# -- the lab --------------------------------------------------------------------------------


def node_fqdn(lab: dict[str, Any], name: str) -> str:
    """The node's Exim primary_hostname (its EHLO name)."""
    return f"{name}.{lab['domain']}"


def bad_client(lab: dict[str, Any]) -> str:
    """Failed logins come from another lab-host address: Dovecot (Exim's SMTP-AUTH backend)
    penalises (delays) every login from an address that failed recently, and the main one
    must stay clean."""
    return str(lab["client_addresses"][0])
