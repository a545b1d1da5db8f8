"""The passdb model (mailcluster/passdb.py): what the deploy renders reads back as the same
entries, for local, proxied and moving users, and so do lines of older files."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailcluster import accounts, passdb, site
from mailcluster.passdb import Entry
from mailcluster.roles.dovecot_passdb import live_backends, passdb_context
from tests.unit.test_site import LOOPBACK

H = ["{CRAM-MD5}" + f"{i:064x}" for i in range(3)]
LOCAL = Entry("alice", H[0], "mail01")
PROXIED = Entry(
    "bob",
    H[1],
    "mail02",
    backend_fqdn="mail02.example.test",
    backend_ip="127.0.0.3",
    master_user=passdb.MASTER_USER,
    master_password="s3cret-_x",
)
MOVING = Entry(
    "carol",
    H[2],
    "mail02",
    moving_from="mail01",
    hold_until=1796000000,
    backend_fqdn="mail02.example.test",
    backend_ip="127.0.0.3",
    master_user=passdb.MASTER_USER,
    master_password="s3cret-_x",
)
# As files written before moves waited instead of refusing had a moving user.
OLD_MOVING_LINES = [
    "# moving: carol from mail01 to mail02",
    f"carol:{H[2]}::::::nologin=y reason=Your_mailbox_is_moving_to_another_server,_try_again",
]


def lines(text: str) -> list[str]:
    """As pyinfra's FileContents fact has a file: its lines, without line ends."""
    return text.splitlines()


@pytest.fixture
def lab(tmp_path: Path) -> site.Site:
    """The loopback site with 60 users in its password store (both nodes get some)."""
    data: dict[str, Any] = yaml.safe_load(LOOPBACK.read_text())
    data["secrets_dir"] = str(tmp_path / "secrets")
    s = site.parse(data, "site.yaml")
    users = {f"user{i:02d}": "{CRAM-MD5}" + f"{i:064x}" for i in range(60)}
    accounts.write_passwords(s.secrets_dir, users)
    return s


def test_each_kind_of_line_is_rendered_and_read_back_as_it_was() -> None:
    text = passdb.render("mail01", [LOCAL, PROXIED, MOVING])
    assert f"\nalice:{H[0]}::::::\n" in text
    assert (
        f"\nbob:{H[1]}::::::proxy_maybe=y host=mail02.example.test hostip=127.0.0.3 port=993 "
        "ssl=yes proxy_timeout=20 master=mailcluster-proxy pass=s3cret-_x\n"
    ) in text
    # A moving user's logins go to the new backend, after a wait.
    assert (
        f"\n# moving: carol from mail01 to mail02\ncarol:{H[2]}::::::proxy_maybe=y "
        "host=mail02.example.test hostip=127.0.0.3 port=993 ssl=yes proxy_timeout=20 "
        "master=mailcluster-proxy pass=s3cret-_x delay_until=1796000000\n"
    ) in text
    assert passdb.parse(lines(text), "mail01") == [LOCAL, PROXIED, MOVING]
    # Moving onto this node: the local line, with the wait.
    here = dataclasses.replace(LOCAL, moving_from="mail02", hold_until=1796000000)
    text = passdb.render("mail01", [here])
    assert (
        f"\n# moving: alice from mail02 to mail01\nalice:{H[0]}::::::delay_until=1796000000\n"
        in text
    )
    assert passdb.parse(lines(text), "mail01") == [here]


def test_a_moving_users_wait_counts_from_the_render() -> None:
    """Entries built by the deploy carry no time: the wait is MOVE_HOLD_S from the
    moment the file is rendered (as the operation runs, not when pyinfra prepared it)."""
    fresh = dataclasses.replace(MOVING, hold_until=0)
    before = int(time.time())
    (got,) = passdb.parse(lines(passdb.render("mail01", [fresh])), "mail01")
    after = int(time.time())
    assert before + passdb.MOVE_HOLD_S <= got.hold_until <= after + passdb.MOVE_HOLD_S
    assert 0 < passdb.MOVE_HOLD_S < 300  # Dovecot refuses a delay_until over 5 minutes


def test_a_refused_moving_line_of_an_older_file_reads_as_moving() -> None:
    got = passdb.parse(OLD_MOVING_LINES, "mail01")
    assert got == [Entry("carol", H[2], "mail02", moving_from="mail01")]
    assert passdb.last_backends(got) == {"carol": "mail01"}
    assert passdb.not_proxied(got) == ["carol"]


@pytest.mark.parametrize("node", ["mail01", "mail02"])
def test_a_nodes_passdb_from_the_site_round_trips(lab: site.Site, node: str) -> None:
    other = "mail02" if node == "mail01" else "mail01"
    # Move some users onto this node (their old backend the other one) and some away.
    built = passdb.entries(lab, node, "pw")
    moving = {e.user: other for e in built[:5]} | {e.user: node for e in built[5:10]}
    for entries in (built, passdb.entries(lab, node, "pw", moving)):
        got = passdb.parse(lines(passdb.render(node, entries)), node)
        assert all(bool(e.hold_until) == bool(e.moving_from) for e in got)
        assert [dataclasses.replace(e, hold_until=0) for e in got] == entries
    kinds = {(e.proxied, bool(e.moving_from)) for e in passdb.entries(lab, node, "pw", moving)}
    assert kinds == {(False, False), (True, False), (False, True), (True, True)}


def test_the_role_renders_the_model(lab: site.Site) -> None:
    from mailcluster import templating

    master = "mailcluster-proxy"
    for node in ("mail01", "mail02"):
        text = templating.render(passdb.TEMPLATE, **passdb_context(lab, node))
        got = passdb.parse(lines(text), node)
        assert [e.user for e in got] == sorted(accounts.read_passwords(lab.secrets_dir))
        for e in got:
            assert e.backend == lab.backend_of(e.user)
            assert e.proxied == (e.backend != node)
            assert not e.proxied or (e.master_user == master and e.master_password)


def test_a_proxied_line_from_before_proxy_timeout_reads_the_same() -> None:
    old = (
        f"bob:{H[1]}::::::proxy_maybe=y host=mail02.example.test hostip=127.0.0.3 port=993 "
        "ssl=yes master=mailcluster-proxy pass=s3cret-_x"
    )
    assert passdb.parse([old], "mail01") == [PROXIED]


def test_a_stopped_move_leaves_users_on_the_backend_they_move_from() -> None:
    text = passdb.render("mail01", [LOCAL, PROXIED, MOVING])
    want = {"alice": "mail01", "bob": "mail02", "carol": "mail01"}
    assert passdb.last_backends(passdb.parse(lines(text), "mail01")) == want
    assert live_backends("mail01", lines(text)) == want  # what the role's moves read


def test_a_refused_line_that_no_move_explains_names_no_backend() -> None:
    got = passdb.parse([f"dave:{H[0]}::::::nologin=y reason=locked"], "mail01")
    assert got == [Entry("dave", H[0], "")]
    assert passdb.last_backends(got) == {}
    assert passdb.not_proxied(got) == ["dave"]  # not handed on: the drain counts it


def test_the_users_a_node_does_not_proxy_are_its_own_and_those_mid_move() -> None:
    text = passdb.render("mail01", [LOCAL, PROXIED, MOVING])
    assert passdb.not_proxied(passdb.parse(lines(text), "mail01")) == ["alice", "carol"]
    drained = passdb.render("mail01", [PROXIED])
    assert passdb.not_proxied(passdb.parse(lines(drained), "mail01")) == []


def test_comments_blank_lines_and_a_missing_file_are_no_users() -> None:
    assert passdb.parse(["# a comment", "", "#moving: x from a to b"], "mail01") == []
    assert passdb.parse([], "mail01") == []
