"""A reload fails no client: mailcluster-reload (what the deploy runs when Exim's or
Dovecot's configuration changes) under a stream of logins on every mail node.

A plain `systemctl reload dovecot` fails this test: each reload cut 3 or 4 of these
logins ("Internal login failure": the login was being handed to an imap process of the
old configuration), 66 in 20 reloads; a plain Exim reload refuses connections while the
daemon re-executes."""

from __future__ import annotations

import time

from tests.conftest import backend_of
from tests.e2e.login_prober import Prober, Probing

RELOAD = "sh /usr/local/sbin/mailcluster-reload"
RELOADS = 5


def test_reloads_of_dovecot_and_exim_fail_no_login(lab, lab_ssh) -> None:
    mail = [h for h in lab["hosts"] if "mail" in h["groups"]]
    users = [a["user"] for a in lab["accounts"] if not a["user"].startswith("bench")]
    probers = []
    for h in mail:
        # Logins of the node's own users are handed to its imap processes (the reload's
        # weak moment); the others are proxied to their backend.
        own = [u for u in users if backend_of(lab, u) == h["name"]][:3]
        probers += [Prober(lab, h["address"], u, ("imap",), gap=0) for u in own]
        probers.append(Prober(lab, h["address"], own[0], ("smtp",), gap=0))
    before = {h["name"]: lab_ssh(h["name"], "pgrep -x imap-login | sort").stdout for h in mail}
    with Probing(probers) as probing:
        time.sleep(2)
        for _ in range(RELOADS):
            for h in mail:
                for service in ("dovecot", "exim4"):
                    done = lab_ssh(h["name"], f"{RELOAD} {service}", check=False)
                    assert done.returncode == 0, (h["name"], service, done.stderr)
            time.sleep(1)
        time.sleep(2)
    for h in mail:
        after = lab_ssh(h["name"], "pgrep -x imap-login | sort").stdout
        assert set(after.split()).isdisjoint(before[h["name"]].split()), "no reload happened"
        tables = lab_ssh(h["name"], "nft list tables").stdout
        assert "mailcluster_reload" not in tables, "a reload left new connections held"
    for p in probers:
        assert p.attempts > 20, p.describe()
    assert not probing.failures(), [p.describe() for p in probers] + probing.failures()
