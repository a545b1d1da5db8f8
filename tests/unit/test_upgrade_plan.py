"""The OS upgrade's plan (mailcluster/upgrade_plan.py): users move at most twice, only
onto new nodes while batches run, never onto a node outside the map; the file round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailcluster.accounts import backend_for
from mailcluster.upgrade_plan import Plan, PlanError, load, save, validate

USERS = [f"user{i:04d}" for i in range(2000)]


def simulate(olds: list[str], news: list[str], others: list[str], batch_size: int):
    """Run a plan's batches over USERS; returns (moves per user, plan)."""
    plan = Plan(
        target="ubuntu24.04", pairs=list(zip(olds, news, strict=True)), batch_size=batch_size
    )
    site_nodes = olds + others + news
    where = {u: backend_for(u, olds + others) for u in USERS}
    moves = {u: 0 for u in USERS}
    for batch in plan.batches():
        pins = plan.pins_for_batch(where, batch, site_nodes)
        for old, _ in batch:
            plan.steps[old] = "joined"
        out = plan.out_of_map(site_nodes)
        for u in USERS:
            assert pins[u] not in out, (u, pins[u])
            if pins[u] != where[u]:
                moves[u] += 1
                assert pins[u] in news, "a move during the batches lands on a new node"
        where = pins
        for old, _ in batch:
            plan.steps[old] = "removed"
    assert plan.current_batch() is None
    final = plan.final_nodes(site_nodes)
    assert sorted(final) == sorted(others + news)
    for u in USERS:
        if backend_for(u, final) != where[u]:
            moves[u] += 1
    return moves, plan


@pytest.mark.parametrize(
    ("n_old", "n_other", "batch"), [(3, 0, 1), (2, 1, 1), (16, 0, 4), (16, 0, 1), (5, 2, 2)]
)
def test_users_move_at_most_twice(n_old: int, n_other: int, batch: int) -> None:
    olds = [f"old{i}" for i in range(n_old)]
    news = [f"new{i}" for i in range(n_old)]
    others = [f"other{i}" for i in range(n_other)]
    moves, _ = simulate(olds, news, others, batch)
    assert max(moves.values()) <= 2
    # Users on nodes outside the plan stay until the end, and move at most once then.
    for u in USERS:
        if backend_for(u, olds + others) in others:
            assert moves[u] <= 1


def test_plain_hashing_would_move_some_users_three_times() -> None:
    """Why the pins: draining one old node after another, with the plain hash, moves
    some users onto old nodes that are replaced later."""
    olds = [f"old{i}" for i in range(6)]
    news = [f"new{i}" for i in range(6)]
    nodes = list(olds)
    where = {u: backend_for(u, nodes) for u in USERS}
    moves = {u: 0 for u in USERS}
    for old, new in zip(olds, news, strict=True):
        nodes = [n for n in nodes if n != old] + [new]
        for u in USERS:
            now = backend_for(u, nodes)
            moves[u] += now != where[u]
            where[u] = now
    assert max(moves.values()) >= 3


def test_out_of_map_follows_the_steps() -> None:
    plan = Plan(target="ubuntu24.04", pairs=[("mail01", "mail04"), ("mail02", "mail05")])
    nodes = ["mail01", "mail02", "mail04", "mail05"]
    assert plan.out_of_map(nodes) == {"mail04", "mail05"}
    plan.steps["mail01"] = "joined"
    assert plan.out_of_map(nodes) == {"mail01", "mail05"}
    assert plan.current_batch() == [("mail01", "mail04")]
    plan.steps["mail01"] = "removed"
    assert plan.current_batch() == [("mail02", "mail05")]
    # A removed node is gone from the site: out_of_map only names the site's nodes.
    assert plan.out_of_map(["mail02", "mail04", "mail05"]) == {"mail05"}


def test_the_file_round_trips_and_is_private(tmp_path: Path) -> None:
    plan = Plan(
        target="ubuntu24.04",
        pairs=[("mail01", "mail04")],
        batch_size=2,
        steps={"mail01": "moved"},
        pins={"alice": "mail04"},
    )
    save(tmp_path, plan)
    assert (tmp_path / "upgrade.json").stat().st_mode & 0o777 == 0o600
    assert load(tmp_path) == plan
    assert load(tmp_path / "nowhere") is None


@pytest.mark.parametrize(
    ("pairs", "problem"),
    [
        ([("mail01", "mail04"), ("mail01", "mail05")], "once"),
        ([("mail01", "mail02"), ("mail02", "mail05")], "once"),
        ([("mail09", "mail04")], "not mail, webmail or db hosts"),
    ],
)
def test_bad_plans_are_refused(pairs: list[tuple[str, str]], problem: str) -> None:
    with pytest.raises(PlanError, match=problem):
        validate(Plan(target="ubuntu24.04", pairs=pairs), ["mail01", "mail02", "mail03"])
