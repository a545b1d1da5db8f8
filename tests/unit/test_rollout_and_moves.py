"""Rollout batches, draining nodes and user moves: the parts that need no machine."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from mailcluster import site
from mailcluster.accounts import backend_for
from mailcluster.roles.dovecot import drain_sessions, live_backends
from mailcluster.rollout import batches
from tests.unit.test_site import LOOPBACK, error_for


@pytest.fixture
def data() -> dict[str, Any]:
    return yaml.safe_load(LOOPBACK.read_text())


def hosts(n: int) -> list[site.Host]:
    return [
        site.Host.model_validate(
            {"name": f"mail{i:02d}", "address": f"127.0.1.{i}", "groups": ["mail"]}
        )
        for i in range(1, n + 1)
    ]


@pytest.mark.parametrize(
    "n,percent,sizes",
    [
        (16, 25, [4, 4, 4, 4]),  # production: 4 batches of 4
        (2, 25, [1, 1]),  # the small lab: one node at a time
        (5, 25, [2, 2, 1]),  # rounded up, never an empty batch
        (3, 100, [3]),
        (3, 1, [1, 1, 1]),
    ],
)
def test_batches_cover_every_node_once_in_site_order(n, percent, sizes) -> None:
    nodes = hosts(n)
    out = batches(nodes, percent)
    assert [len(b) for b in out] == sizes
    assert [h for b in out for h in b] == nodes


def test_a_draining_node_is_nobodys_backend(data) -> None:
    data["hosts"][0]["draining"] = True
    s = site.parse(data, "site.yaml")
    assert s.backend_nodes() == ["mail02"]
    assert {s.backend_of(u) for u in ("alice", "bob", "carol", "dave")} == {"mail02"}


def test_draining_is_for_mail_nodes_and_one_must_remain(data) -> None:
    data["hosts"][2]["draining"] = True
    assert "hosts: webmail01: draining is for mail nodes only" in error_for(data)
    data["hosts"][2]["draining"] = False
    data["hosts"][0]["draining"] = data["hosts"][1]["draining"] = True
    assert "every mail node is draining" in error_for(data)


def test_an_override_cannot_pin_a_user_to_a_draining_node(data) -> None:
    data["hosts"][0]["draining"] = True
    data["backend_overrides"] = {"alice": "mail01"}
    assert "backend_overrides.alice: 'mail01' is not a mail node that holds mail" in error_for(data)


def test_rollout_settings_go_together(data) -> None:
    data["rollout"] = {"check_user": "alice"}
    assert "check_user and check_password_file go together" in error_for(data)
    data["rollout"] = {"batch_percent": 0}
    assert "rollout.batch_percent" in error_for(data)


PASSDB = """\
# comment
alice:{CRAM-MD5}aa::::::
bob:{CRAM-MD5}bb::::::proxy_maybe=y host=mail02.example.test hostip=127.0.0.3 port=993
# moving: carol from mail02 to mail03
carol:{CRAM-MD5}cc::::::nologin=y reason=moving
"""


def test_the_live_map_is_read_back_from_a_passdb_including_a_stopped_move() -> None:
    got = live_backends("mail01", PASSDB.splitlines())
    assert got == {"alice": "mail01", "bob": "mail02", "carol": "mail02"}


def test_adding_a_node_moves_only_the_users_it_wins() -> None:
    users = [f"user{i}" for i in range(2000)]
    before = {u: backend_for(u, ["mail01", "mail02"]) for u in users}
    after = {u: backend_for(u, ["mail01", "mail02", "mail03"]) for u in users}
    moved = [u for u in users if before[u] != after[u]]
    assert all(after[u] == "mail03" for u in moved)
    assert 0.25 < len(moved) / len(users) < 0.42  # about a third


def test_a_rendered_move_reads_back_as_the_old_map() -> None:
    from mailcluster import templating
    from tests.unit.test_templates import _PASSDB

    out = templating.render("dovecot/passdb.j2", **_PASSDB)
    # Carol moves to mail03: her logins go there, after the wait.
    assert "# moving: carol from mail02 to mail03\ncarol:{CRAM-MD5}" + "2" * 64 in out
    assert "mail03.example.test" in out and "delay_until=1796000000\n" in out
    assert live_backends("mail01", out.splitlines()) == {
        "alice": "mail01",
        "bob": "mail02",
        "carol": "mail02",
    }


def test_the_drain_command_names_the_users_and_fails_when_they_stay() -> None:
    cmd = drain_sessions(["alice", "bob"], timeout_s=7)
    assert "doveadm kick" in cmd and "seq 7" in cmd and "(alice|bob)" in cmd
    assert cmd.rstrip().endswith("exit 1")
