"""No open relay: a battery of address and HELO tricks, unauthenticated on port 25 from the
lab host, against every mail node. Each is refused at RCPT; DATA is never sent (MAIL, RCPT,
RSET), so nothing is ever delivered anywhere. Only reserved names and addresses are used
(example.org, 198.51.100.0/24).

And the other side: MX traffic for our own users is still accepted without AUTH.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest

from tests.conftest import lab_state_hosts
from tests.e2e.smtp_client import (
    Reply,
    close,
    connect,
    envelope,
    node_address,
    node_fqdn,
    open_session,
)

MAIL_NODES = [h["name"] for h in lab_state_hosts() if "mail" in h["groups"]] or ["(no lab)"]
USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]


class Trick(NamedTuple):
    """An envelope; {domain}, {fqdn} (the node's name) and {ip} (its address) are filled in.

    helo: None for a plain EHLO with the lab client's own name."""

    recipient: str
    sender: str = "someone@example.org"
    helo: str | None = None


TRICKS = {
    "outside-recipient": Trick("user@example.org"),
    "percent-hack": Trick("user%example.org@{domain}"),
    "percent-hack-via-node-fqdn": Trick("user%example.org@{fqdn}"),
    "percent-hack-via-own-address-literal": Trick("user%example.org@[{ip}]"),
    "quoted-percent-hack": Trick('"user%example.org"@{domain}'),
    "bang-path": Trick("example.org!user@{domain}"),
    "bang-path-via-node-fqdn": Trick("example.org!user@{fqdn}"),
    "quoted-local-part-with-at": Trick('"user@example.org"@{domain}'),
    "source-route": Trick("@{domain}:user@example.org"),
    "source-route-via-two-local-hops": Trick("@{fqdn},@{domain}:user@example.org"),
    "double-at": Trick("user@example.org@{domain}"),
    "trailing-dot-on-domain": Trick("user@example.org."),
    "address-literal": Trick("user@[198.51.100.7]"),
    "own-address-literal": Trick("user@[{ip}]"),
    "local-looking-subdomain": Trick("user@evil.{domain}"),
    "local-looking-superdomain": Trick("user@{domain}.example.org"),
    "uppercase-outside-domain": Trick("user@EXAMPLE.ORG"),
    "mixed-case-outside-domain": Trick("User@Example.Org"),
    "localhost-domain": Trick("root@localhost"),
    "leading-dot-local-part": Trick(".alice@{domain}"),
    "trailing-dot-local-part": Trick("alice.@{domain}"),
    "spoofed-local-sender": Trick("user@example.org", sender="alice@{domain}"),
    "null-sender": Trick("user@example.org", sender=""),
    "helo-localhost": Trick("user@example.org", helo="localhost"),
    "helo-own-node-name": Trick("user@example.org", helo="{fqdn}"),
    "helo-own-address-literal": Trick("user@example.org", helo="[{ip}]"),
}


def fill(text: str, lab: dict[str, Any], node: str) -> str:
    return text.format(domain=lab["domain"], fqdn=node_fqdn(lab, node), ip=node_address(lab, node))


def try_envelope(lab: dict[str, Any], node: str, trick: Trick) -> tuple[Reply, Reply]:
    client = connect(node_address(lab, node), 25, lab)
    try:
        if trick.helo is None:
            code, text = client.ehlo()
        else:
            code, text = client.helo(fill(trick.helo, lab, node))
        assert code == 250, (code, text)
        return envelope(client, fill(trick.sender, lab, node), fill(trick.recipient, lab, node))
    finally:
        close(client)


@pytest.mark.parametrize("node", MAIL_NODES)
@pytest.mark.parametrize("trick", TRICKS.values(), ids=TRICKS.keys())
def test_an_unauthenticated_relay_attempt_is_refused_at_rcpt(lab, node, trick) -> None:
    mail, rcpt = try_envelope(lab, node, trick)
    # The sender is accepted, so it is the recipient that is refused (not a typo in MAIL).
    assert mail[0] == 250, mail
    assert 500 <= rcpt[0] < 600, rcpt


# -- MX traffic for our own users -----------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("node", MAIL_NODES)
def test_mail_for_a_local_user_is_accepted_at_rcpt_without_auth(lab, node, user) -> None:
    # Whichever node is the user's backend: the other one hands the mail on.
    mail, rcpt = try_envelope(lab, node, Trick(f"{user}@{{domain}}"))
    assert mail[0] == 250, mail
    assert rcpt[0] == 250, rcpt


@pytest.mark.parametrize("node", MAIL_NODES)
def test_mail_for_the_postmaster_is_accepted_at_rcpt_without_auth(lab, node) -> None:
    mail, rcpt = try_envelope(lab, node, Trick("postmaster@{domain}"))
    assert mail[0] == 250, mail
    assert rcpt[0] == 250, rcpt


@pytest.mark.parametrize("node", MAIL_NODES)
def test_mail_for_an_unknown_local_user_is_refused_at_rcpt(lab, node) -> None:
    mail, rcpt = try_envelope(lab, node, Trick("no-such-user@{domain}"))
    assert mail[0] == 250, mail
    assert 500 <= rcpt[0] < 600, rcpt


@pytest.mark.parametrize("node", MAIL_NODES)
def test_refused_recipients_leave_the_session_usable(lab, node) -> None:
    # After a refused relay attempt the same session still takes mail for a local user:
    # the refusals are per recipient, not a broken connection.
    client = open_session(node_address(lab, node), "plain", lab)
    try:
        _, refused = envelope(client, "someone@example.org", "user@example.org")
        _, accepted = envelope(client, "someone@example.org", f"alice@{lab['domain']}")
        assert 500 <= refused[0] < 600, refused
        assert accepted[0] == 250, accepted
    finally:
        close(client)
