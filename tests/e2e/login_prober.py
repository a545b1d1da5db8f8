"""Clients that log in again and again while something changes under them, and record
every failed attempt (a reload or a rollout must not fail a single one)."""

from __future__ import annotations

import imaplib
import smtplib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.conftest import password_of
from tests.e2e.imap_client import context

TIMEOUT = 20


@dataclass
class Prober:
    """Logs ``user`` in through ``address`` in a loop: IMAPS (993) and SMTP submission
    (587 + STARTTLS + AUTH), in turn, or only one of them; ``gap`` seconds between
    attempts."""

    lab: dict[str, Any]
    address: str
    user: str
    protocols: tuple[str, ...] = ("imap", "smtp")
    gap: float = 0.1
    attempts: int = 0
    failures: list[str] = field(default_factory=list)

    def _imap(self) -> None:
        client = imaplib.IMAP4_SSL(
            self.address, 993, ssl_context=context(self.lab), timeout=TIMEOUT
        )
        try:
            client.login(self.user, password_of(self.lab, self.user))
        finally:
            client.logout()

    def _smtp(self) -> None:
        with smtplib.SMTP(self.address, 587, timeout=TIMEOUT) as client:
            client.starttls(context=context(self.lab))
            client.login(self.user, password_of(self.lab, self.user))

    def run(self, stop: threading.Event) -> None:
        logins = {"imap": self._imap, "smtp": self._smtp}
        while not stop.is_set():
            for name in self.protocols:
                self.attempts += 1
                started, t0 = time.strftime("%T"), time.monotonic()
                try:
                    logins[name]()
                except (imaplib.IMAP4.error, smtplib.SMTPException, OSError) as exc:
                    self.failures.append(
                        f"{started} {name} {self.user} via {self.address} "
                        f"({time.monotonic() - t0:.1f} s): {exc!r}"
                    )
                time.sleep(self.gap)

    def describe(self) -> str:
        return f"{self.address} {self.user}: {len(self.failures)} of {self.attempts} failed"


class Probing:
    """``with Probing(probers):`` runs every prober in its own thread for the block."""

    def __init__(self, probers: list[Prober]) -> None:
        self.probers = probers
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=p.run, args=(self.stop,), daemon=True) for p in probers
        ]

    def __enter__(self) -> Probing:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=2 * TIMEOUT + 5)

    def failures(self) -> list[str]:
        return [f for p in self.probers for f in p.failures]
