"""`mailctl upgrade` (mailcluster/upgrade.py) as a state machine, against a stand-in for
the world (machines, deploys, health): the batches go through their steps in order, the
map follows the plan at each deploy, a stop anywhere resumes where it stopped, and an
unhealthy cluster stops it with the plan kept."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailcluster import accounts, passdb, site, status, upgrade, upgrade_plan
from mailcluster.site import Site
from tests.unit.test_site import LOOPBACK

USERS = [f"user{i:02d}" for i in range(40)]


class FakeWorld(upgrade.Runner):
    """A lab: ``lab add/drain/remove`` edit the site data, a deploy records the map."""

    def __init__(self, data: dict[str, Any], fail_at: str | None = None) -> None:
        self.inventory = "inventory/lab.py"
        self.lab = True
        self.data = data
        self.calls: list[str] = []
        self.maps: list[dict[str, str]] = []
        self.fail_at = fail_at
        self.health_level = status.OK
        self.next_address = 50

    def site(self) -> tuple[Site, dict]:
        return site.parse(copy.deepcopy(self.data), "site.yaml"), {}

    def _maybe_fail(self, what: str) -> None:
        if self.fail_at and self.fail_at in what:
            self.fail_at = None  # once
            raise upgrade.UpgradeError(f"stopped at {what}")

    def deploy(self, what: str, limit: str | None = None, deploy_file: str = "deploy.py") -> None:
        self.calls.append(f"deploy {limit or 'all'} {deploy_file}: {what}")
        self._maybe_fail(what)
        s, _ = self.site()
        if deploy_file == "deploy.py":
            self.maps.append({u: s.backend_of(u) for u in USERS})

    def lab_cli(self, *args: str) -> None:
        self.calls.append("lab " + " ".join(args))
        self._maybe_fail(" ".join(args))
        verb, name = args[0], args[1]
        hosts = self.data["hosts"]
        if verb == "add":
            self.next_address += 1
            addr = f"127.0.1.{self.next_address}"
            groups = args[args.index("--groups") + 1].split(",")
            hosts.append({"name": name, "address": addr, "groups": groups})
        elif verb == "drain":
            next(h for h in hosts if h["name"] == name)["draining"] = True
        elif verb == "remove":
            self.data["hosts"] = [h for h in hosts if h["name"] != name]

    def wait_for_held_logins(self, moved_at: float | None) -> None:
        self.calls.append(f"wait for held logins ({'after the move' if moved_at else 'all'})")

    def os_release(self, s: Site, connect: dict, node: str) -> str:
        return "ubuntu 24.04"

    def health(self, s: Site, connect: dict) -> tuple[int, str]:
        return self.health_level, "(report)"

    def webmail_php(self, s: Site, connect: dict, nodes: list[str], action: str) -> None:
        self.calls.append(f"php-fpm {action} {','.join(nodes)}")

    def copy_database(self, s: Site, connect: dict, old: str, new: str) -> None:
        self.calls.append(f"copy database {old} -> {new}")
        self._maybe_fail(f"copy database {old}")


@pytest.fixture
def world(tmp_path: Path) -> FakeWorld:
    data: dict[str, Any] = yaml.safe_load(LOOPBACK.read_text())
    data["secrets_dir"] = str(tmp_path)
    data["hosts"].insert(2, {"name": "mail03", "address": "127.0.0.5", "groups": ["mail"]})
    accounts.write_passwords(tmp_path, {u: "{CRAM-MD5}" + "0" * 64 for u in USERS})
    return FakeWorld(data)


PAIRS = [("mail01", "mail04"), ("mail02", "mail05"), ("mail03", "mail06")]


def run(world: FakeWorld, pairs: list[tuple[str, str]] = PAIRS) -> upgrade_plan.Plan:
    return upgrade.upgrade(world.inventory, pairs, "ubuntu24.04", 1, runner=lambda _: world)


def moves_per_user(maps: list[dict[str, str]], start: dict[str, str]) -> dict[str, int]:
    moves = dict.fromkeys(USERS, 0)
    last = start
    for m in maps:
        for u in USERS:
            moves[u] += m[u] != last[u]
        last = m
    return moves


def test_every_batch_goes_through_its_steps_and_users_move_at_most_twice(world) -> None:
    start = {u: world.site()[0].backend_of(u) for u in USERS}
    run(world)
    s, _ = world.site()
    assert [h.name for h in s.in_group("mail")] == ["mail04", "mail05", "mail06"]
    assert upgrade_plan.load(s.secrets_dir) is None  # done: the plan is gone
    # Per batch: add, deploy (joined), drain mark, deploy (moved), the queue, the held
    # logins passed on, remove, deploy; then the last deploy without the pins.
    adds = [c for c in world.calls if c.startswith("lab add")]
    assert adds == [f"lab add {n} --groups mail --platform ubuntu24.04" for _, n in PAIRS]
    assert world.calls[-1].startswith("deploy all deploy.py: the pins dropped")
    for old, _ in PAIRS:
        i = world.calls.index(f"lab drain {old}")
        assert world.calls[i + 1].startswith("deploy all deploy.py: users of")
        assert world.calls[i + 2].startswith(f"deploy {old} mailcluster/deploys/drain.py")
        assert world.calls[i + 3] == "wait for held logins (after the move)"
        assert world.calls[i + 4] == f"lab remove {old}"
    # Never a user on a node outside the map at a deploy; at most two moves each.
    final = {u: s.backend_of(u) for u in USERS}
    assert world.maps[-1] == final
    assert max(moves_per_user(world.maps, start).values()) <= 2


@pytest.mark.parametrize(
    "stop_at",
    ["mail05 set up", "users of mail02", "mail02's queue", "remove mail02", "forget mail02"],
)
def test_a_stop_anywhere_resumes_where_it_stopped(world, stop_at: str) -> None:
    world.fail_at = stop_at
    with pytest.raises(upgrade.UpgradeError, match="stopped at"):
        run(world)
    plan = upgrade_plan.load(world.site()[0].secrets_dir)
    assert plan is not None and plan.step("mail01") == "removed"
    # Again with no node named: it resumes; naming other nodes is refused.
    with pytest.raises(upgrade.UpgradeError, match="under way"):
        run(world, [("mail01", "mail09")])
    run(world, [])
    s, _ = world.site()
    assert [h.name for h in s.in_group("mail")] == ["mail04", "mail05", "mail06"]
    assert sum(c.startswith("lab add mail05") for c in world.calls) == 1  # not twice


def test_an_unhealthy_cluster_stops_the_upgrade_and_keeps_the_plan(world) -> None:
    world.health_level = status.CRITICAL
    with pytest.raises(upgrade.UpgradeError, match="not healthy"):
        run(world)
    assert not any(c.startswith("lab add") for c in world.calls)
    plan = upgrade_plan.load(world.site()[0].secrets_dir)
    assert plan is not None and plan.current_batch() == [PAIRS[0]]


def test_pairs_are_written_old_equals_new() -> None:
    assert upgrade.parse_pairs(["mail01=mail04"]) == [("mail01", "mail04")]
    for bad in ("mail01", "=mail04", "mail01="):
        with pytest.raises(upgrade.UpgradeError, match="OLD=NEW"):
            upgrade.parse_pairs([bad])


def test_the_command_with_nothing_under_way_asks_for_the_nodes(monkeypatch, capsys) -> None:
    from mailcluster import mailctl

    monkeypatch.setattr(upgrade.Runner, "site", lambda self: (site.load(LOOPBACK), {}))
    monkeypatch.setattr(upgrade_plan, "load", lambda secrets_dir: None)
    assert mailctl.main(["-i", "inventory/lab.py", "upgrade"]) == 2
    assert "no upgrade under way; name the nodes: OLD=NEW" in capsys.readouterr().err


def test_outside_the_lab_the_operator_takes_old_nodes_out_of_dns_before_they_drain(
    world,
) -> None:
    world.lab = False
    with pytest.raises(upgrade.UpgradeError, match="mail04: not in the site file"):
        run(world, PAIRS[:1])
    # The operator installs it and lists it: it holds no mailbox until its batch moves.
    world.data["hosts"].append({"name": "mail04", "address": "127.0.1.4", "groups": ["mail"]})
    with pytest.raises(upgrade.UpgradeError, match="take mail01 out of it, wait for the TTL"):
        run(world, [])
    s, _ = world.site()
    plan = upgrade_plan.load(s.secrets_dir)
    assert plan is not None and plan.steps["mail01"] == "joined"
    assert not any("lab drain" in c for c in world.calls)
    # Marked draining by the operator: the run goes on from there, moving its users.
    next(h for h in world.data["hosts"] if h["name"] == "mail01")["draining"] = True
    with pytest.raises(upgrade.UpgradeError, match="power them off"):
        run(world, [])
    assert upgrade_plan.load(s.secrets_dir).steps["mail01"] == "drained"  # type: ignore[union-attr]


def test_the_webmail_and_db_host_moves_after_the_mail_nodes_with_its_database(world) -> None:
    from mailcluster.roles.db import db_host
    from mailcluster.roles.webmail import schema_node

    hosts_at: list[tuple[str, str, str]] = []
    deploy = world.deploy

    def recording(what: str, limit: str | None = None, deploy_file: str = "deploy.py") -> None:
        s, _ = world.site()
        hosts_at.append((what, db_host(s), schema_node(s)))
        deploy(what, limit, deploy_file)

    world.deploy = recording
    run(world, [*PAIRS, ("webmail01", "webmail02")])
    s, _ = world.site()
    assert [h.name for h in s.hosts] == ["mail04", "mail05", "mail06", "webmail02"]
    assert s.host("webmail02").groups == ["webmail", "db"]
    calls = world.calls
    i = calls.index("lab add webmail02 --groups webmail,db --platform ubuntu24.04")
    assert i > calls.index("lab remove mail03")  # after every mail batch
    assert calls[i + 1].startswith("deploy all deploy.py: webmail02 set up beside webmail01")
    assert calls[i + 2 : i + 6] == [
        "php-fpm stop webmail01,webmail02",
        "copy database webmail01 -> webmail02",
        "deploy webmail01,webmail02 deploy.py: the webmail uses the database on webmail02",
        "php-fpm start webmail01,webmail02",
    ]
    assert calls[i + 6] == "lab remove webmail01"
    # Where the webmail's database is at each deploy: the old host's until the copy.
    where = {what: (db, schema) for what, db, schema in hosts_at}
    assert where["webmail02 set up beside webmail01"] == ("webmail01", "webmail02")
    assert where["the webmail uses the database on webmail02"] == ("webmail02", "webmail02")
    assert where["the others forget webmail01"] == ("webmail02", "webmail02")


def test_a_failed_database_copy_serves_on_from_the_old_host_and_resumes(world) -> None:
    world.fail_at = "copy database webmail01"
    pairs = [*PAIRS, ("webmail01", "webmail02")]
    with pytest.raises(upgrade.UpgradeError, match="stopped at copy"):
        run(world, pairs)
    assert world.calls[-2:] == [
        "copy database webmail01 -> webmail02",
        "php-fpm start webmail01,webmail02",
    ]
    plan = upgrade_plan.load(world.site()[0].secrets_dir)
    assert plan is not None and plan.step("webmail01") == "joined" and not plan.db_to
    run(world, [])
    assert world.calls.count("copy database webmail01 -> webmail02") == 2
    assert world.calls.count("lab add webmail02 --groups webmail,db --platform ubuntu24.04") == 1


def test_a_failed_switch_after_the_copy_keeps_the_webmail_stopped_and_does_not_copy_again(
    world,
) -> None:
    world.fail_at = "the webmail uses the database"
    with pytest.raises(upgrade.UpgradeError):
        run(world, [*PAIRS, ("webmail01", "webmail02")])
    # The old copy is stale now: php-fpm is not started on it.
    assert world.calls[-1].startswith("deploy webmail01,webmail02")
    run(world, [])
    assert world.calls.count("copy database webmail01 -> webmail02") == 1
    assert "php-fpm start webmail01,webmail02" in world.calls


def test_outside_the_lab_the_operator_removes_the_old_webmail_host(world) -> None:
    world.lab = False
    world.data["hosts"].append(
        {"name": "webmail02", "address": "127.0.0.9", "groups": ["webmail", "db"]}
    )
    with pytest.raises(upgrade.UpgradeError, match="webmail02: serving. Put it in DNS"):
        run(world, [("webmail01", "webmail02")])
    assert "copy database webmail01 -> webmail02" in world.calls
    world.data["hosts"] = [h for h in world.data["hosts"] if h["name"] != "webmail01"]
    run(world, [])
    assert world.calls[-2].startswith("deploy all deploy.py: the others forget webmail01")


def test_an_old_node_goes_only_after_the_logins_held_on_it_are_passed_on(world) -> None:
    """A login held on an old node by the move (delay_until) is proxied on when the hold
    ends; the node must still be there then (upgrade.HELD_LOGINS_S)."""
    run(world)
    calls = world.calls
    for old, _ in PAIRS:
        moved = calls.index(f"deploy all deploy.py: users of {old} moved")
        removed = calls.index(f"lab remove {old}")
        waits = [i for i, c in enumerate(calls) if c.startswith("wait for held logins")]
        assert any(moved < i < removed for i in waits), calls[moved : removed + 1]
    assert upgrade.HELD_LOGINS_S > passdb.MOVE_HOLD_S


def test_resumed_after_the_move_it_waits_the_whole_hold(world) -> None:
    with pytest.raises(upgrade.UpgradeError):
        world.fail_at = "mail01's queue delivered"
        run(world)
    world.calls.clear()
    run(world, [])
    assert "wait for held logins (all)" in world.calls[:3], world.calls[:5]
