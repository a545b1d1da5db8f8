"""No failed login during a rolling deploy: clients log in every 100 ms through each
mail node (IMAPS and SMTP submission, in turn; one user whose mailbox is on that node,
one whose logins it proxies) while a rollout changes Dovecot's and Exim's configuration
on every node, and again while a second rollout changes it back."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import REPO, backend_of
from tests.deploy.test_rollout import rollout
from tests.e2e.login_prober import Prober, Probing

MARK = "# changed by tests/deploy/test_rolling_logins.py"
CHANGED = {
    "dovecot/dovecot.conf.j2": "/etc/dovecot/dovecot.conf",
    "exim4/exim4.conf.j2": "/etc/exim4/exim4.conf",
}


def changed_templates(tmp: Path) -> Path:
    """The real templates with one comment line more: a change every node must take,
    validated and reloaded like any other."""
    for template in CHANGED:
        text = (REPO / "templates" / template).read_text()
        (tmp / template).parent.mkdir(parents=True, exist_ok=True)
        (tmp / template).write_text(text + f"\n{MARK}\n")
    return tmp


def test_no_login_fails_through_any_node_while_a_rollout_changes_every_node(
    lab, lab_ssh, tmp_path
) -> None:
    mail = [h for h in lab["hosts"] if "mail" in h["groups"]]
    users = [a["user"] for a in lab["accounts"] if not a["user"].startswith("bench")]
    probers = []
    for h in mail:
        own = next(u for u in users if backend_of(lab, u) == h["name"])
        proxied = next(u for u in reversed(users) if backend_of(lab, u) != h["name"])
        probers += [Prober(lab, h["address"], own), Prober(lab, h["address"], proxied)]
    with Probing(probers) as probing:
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
    for h in mail:
        for live in CHANGED.values():
            assert MARK not in lab_ssh(h["name"], f"cat {live}").stdout
    for p in probers:
        assert p.attempts > 50, p.describe()
    assert not probing.failures(), [p.describe() for p in probers] + probing.failures()
