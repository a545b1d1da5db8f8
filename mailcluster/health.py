"""Health checks a rolling deploy runs on each changed host, as a mail client would.

Each check connects to the host's own address but verifies TLS against the site CA for
the service name users are told (imap.<domain>, ...): what a client behind the service
name would see if that host answered. A check returns None when healthy, else a reason.
"""

from __future__ import annotations

import contextlib
import http.client
import imaplib
import smtplib
import socket
import ssl
from dataclasses import dataclass

TIMEOUT_S = 15


@dataclass(frozen=True)
class Target:
    address: str
    ca_cert: str
    service_names: dict[str, str]

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_cert)


class _IMAPS(imaplib.IMAP4_SSL):
    """IMAPS to an address, verifying the certificate for a name."""

    def __init__(self, address: str, name: str, context: ssl.SSLContext) -> None:
        self._address = address
        super().__init__(name, 993, ssl_context=context, timeout=TIMEOUT_S)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self._address, self.port), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def imap_login(t: Target, user: str, password: str) -> str | None:
    """IMAPS LOGIN and SELECT INBOX (read-only: the mailbox is not changed)."""
    try:
        client = _IMAPS(t.address, t.service_names["imap"], t.context())
        try:
            client.login(user, password)
            typ, _ = client.select("INBOX", readonly=True)
            if typ != "OK":
                return f"IMAP SELECT INBOX answered {typ}"
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                client.logout()
    except (imaplib.IMAP4.error, OSError) as exc:
        return f"IMAP login on {t.address}:993 failed: {exc}"
    return None


def smtp_login(t: Target, user: str, password: str) -> str | None:
    """Submission (587): STARTTLS, then AUTH PLAIN; no mail is sent."""
    try:
        with smtplib.SMTP(t.address, 587, timeout=TIMEOUT_S) as client:
            client.ehlo("mailcluster-rollout")
            client._host = t.service_names["smtp"]  # type: ignore[attr-defined]  # SNI/verify name
            client.starttls(context=t.context())
            client.ehlo("mailcluster-rollout")
            client.login(user, password)
    except (smtplib.SMTPException, OSError) as exc:
        return f"SMTP AUTH on {t.address}:587 failed: {exc}"
    return None


def webmail_page(t: Target) -> str | None:
    """The RoundCube login page over HTTPS answers 200 with its login form."""
    name = t.service_names["webmail"]
    conn = http.client.HTTPSConnection(name, 443, context=t.context(), timeout=TIMEOUT_S)
    try:
        sock = socket.create_connection((t.address, 443), TIMEOUT_S)
        conn.sock = t.context().wrap_socket(sock, server_hostname=name)
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        if resp.status != 200 or "rcmloginuser" not in body:
            return f"webmail on {t.address}:443 answered {resp.status} without its login form"
    except (http.client.HTTPException, OSError) as exc:
        return f"webmail on {t.address}:443 failed: {exc}"
    finally:
        conn.close()
    return None
