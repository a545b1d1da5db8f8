"""The proxy's master user: what one mail node logs in as on another to proxy a session.

Its secret is in every node's passdb (the proxy fields), so whoever reads one node's
passdb, or a backup, has it. It must open nothing from outside the cluster: the lab host
is not a cluster address. The positive control logs in with the same secret from another
mail node, so a refusal here is the network rule's, not a wrong secret's.
"""

from __future__ import annotations

import imaplib
import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailcluster.roles.dovecot import MASTER_USER
from tests.conftest import backend_of, lab_state_hosts, node_address
from tests.e2e.imap_client import open_session, outcome

MAIL_NODES = [h["name"] for h in lab_state_hosts() if "mail" in h["groups"]] or ["(no lab)"]
USERS = ["alice", "bob", "carol", "dave"]


def master_password(lab: dict[str, Any]) -> str:
    site = yaml.safe_load(Path(lab["site_file"]).read_text())
    path = Path(site["secrets_dir"]) / "dovecot-master.json"
    return str(json.loads(path.read_text())["password"])


def master_login(how: str, user: str, secret: str) -> Callable[[imaplib.IMAP4], object]:
    if how == "PLAIN":
        # What the proxy itself sends: the user as authorization identity, the master
        # user's name and secret as credentials.
        return lambda c: c.authenticate(
            "PLAIN", lambda _: f"{user}\0{MASTER_USER}\0{secret}".encode()
        )
    return lambda c: c.login(f"{user}*{MASTER_USER}", secret)


@pytest.mark.parametrize("node", MAIL_NODES)
def test_the_master_user_is_refused_from_outside_the_cluster(lab, node) -> None:
    secret = master_password(lab)
    # The address for deliberate failures: never banned (site bruteforce.ignore), and not
    # the main one, which Dovecot would then slow down (its penalty is per address).
    source = lab["client_addresses"][0]
    from concurrent.futures import ThreadPoolExecutor

    def one(case: tuple[str, str]) -> str:
        # All at once: each refusal waits out Dovecot's penalty for the address.
        client = open_session(node_address(lab, node), "tls", lab, source=source)
        return outcome(client, master_login(case[1], case[0], secret))

    cases = [(user, how) for user in USERS for how in ("PLAIN", "LOGIN")]
    with ThreadPoolExecutor(len(cases)) as pool:
        results = dict(zip(cases, pool.map(one, cases), strict=True))
    opened = {k: v for k, v in results.items() if "AUTHENTICATIONFAILED" not in v}
    assert opened == {}, f"{node}: master logins from the lab host not refused: {opened}"


def test_the_master_user_works_from_another_mail_node(lab, lab_ssh) -> None:
    if len(MAIL_NODES) < 2:
        pytest.skip("one mail node: no proxy, no master user")
    target, proxy = MAIL_NODES[0], MAIL_NODES[1]
    user = next(u for u in USERS if backend_of(lab, u) == target)
    script = f"""
import imaplib, socket, ssl
socket.setdefaulttimeout(20)  # Python 3.8 (Ubuntu 20.04): IMAP4_SSL takes no timeout
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
c = imaplib.IMAP4_SSL({node_address(lab, target)!r}, 993, ssl_context=ctx)
secret = open("/dev/stdin").read().strip()
c.authenticate("PLAIN", lambda _: ({user!r} + "\\0" + {MASTER_USER!r} + "\\0" + secret).encode())
print(c.select("INBOX", readonly=True)[0])
c.logout()
"""
    proc = lab_ssh(
        proxy,
        f"python3 -c {shlex.quote(script)}",
        check=False,
        input=master_password(lab),
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr[-1500:]
