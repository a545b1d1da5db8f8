"""(Not part of `make test` yet: `make soak`. It still fails about one attempt in 300: a
TLS handshake cut by Dovecot's reload, or a connection refused while Exim re-executes;
see the README. It is kept as it is, the gate the product has to pass.)

No failed login during a rolling deploy: a client logs in every 100 ms through each
mail node (IMAPS and SMTP submission, in turn) while a rollout changes Dovecot's and
Exim's configuration on every node, and again while a second rollout changes it back."""

from __future__ import annotations

import imaplib
import smtplib
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import REPO, password_of
from tests.deploy.test_rollout import rollout

MARK = "# changed by tests/deploy/test_rolling_logins.py"
CHANGED = {"dovecot/dovecot.conf.j2": "/etc/dovecot/dovecot.conf"}
CHANGED["exim4/exim4.conf.j2"] = "/etc/exim4/exim4.conf"


def changed_templates(tmp: Path) -> Path:
    """The real templates with one comment line more: a change every node must take,
    validated and reloaded like any other."""
    for template in CHANGED:
        text = (REPO / "templates" / template).read_text()
        (tmp / template).parent.mkdir(parents=True, exist_ok=True)
        (tmp / template).write_text(text + f"\n{MARK}\n")
    return tmp


@dataclass
class Prober:
    lab: dict[str, Any]
    address: str
    user: str
    attempts: int = 0
    failures: list[str] = field(default_factory=list)

    def _imap(self, ctx: ssl.SSLContext) -> None:
        client = imaplib.IMAP4_SSL(self.address, 993, ssl_context=ctx, timeout=20)
        try:
            client.login(self.user, password_of(self.lab, self.user))
        finally:
            client.logout()

    def _smtp(self, ctx: ssl.SSLContext) -> None:
        with smtplib.SMTP(self.address, 587, timeout=20) as client:
            client.starttls(context=ctx)
            client.login(self.user, password_of(self.lab, self.user))

    def run(self, stop: threading.Event) -> None:
        ctx = ssl.create_default_context(cafile=self.lab["ca_cert"])
        while not stop.is_set():
            for name, login in (("imap", self._imap), ("smtp", self._smtp)):
                self.attempts += 1
                try:
                    login(ctx)
                except (imaplib.IMAP4.error, smtplib.SMTPException, OSError) as exc:
                    self.failures.append(f"{time.strftime('%T')} {name}: {exc!r}")
                time.sleep(0.1)


def test_no_login_fails_through_any_node_while_a_rollout_changes_every_node(
    lab, lab_ssh, tmp_path
) -> None:
    mail = [h for h in lab["hosts"] if "mail" in h["groups"]]
    users = ["frank", "grace", "heidi", "erin"]
    probers = [Prober(lab, h["address"], users[i % len(users)]) for i, h in enumerate(mail)]
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,), daemon=True) for p in probers]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        bad = {"MAILCLUSTER_TEMPLATE_PATH": str(changed_templates(tmp_path))}
        changed = rollout(env=bad)
        assert changed.returncode == 0, changed.stdout[-3000:] + changed.stderr[-2000:]
        for h in mail:
            for live in CHANGED.values():
                assert MARK in lab_ssh(h["name"], f"cat {live}").stdout, (h["name"], live)
        back = rollout()
        assert back.returncode == 0, back.stdout[-3000:] + back.stderr[-2000:]
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    for h in mail:
        for live in CHANGED.values():
            assert MARK not in lab_ssh(h["name"], f"cat {live}").stdout
    for p in probers:
        assert p.attempts > 50, (p.address, p.attempts)
        assert not p.failures, f"{p.address}: {len(p.failures)} of {p.attempts}: {p.failures}"
