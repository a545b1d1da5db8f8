"""Lab pieces that need no machine: byte sizes, topologies, the ruleset text."""

from __future__ import annotations

import argparse

import pytest

from mailcluster.lab import config, net
from mailcluster.lab.__main__ import parse_bytes
from mailcluster.lab.topology import machines


@pytest.mark.parametrize(
    "text,value",
    [
        ("5000000", 5000000),
        ("10M", 10 * 1024**2),
        ("1G", 1024**3),
        ("64k", 65536),
        ("2MiB", 2 * 1024**2),
        ("none", None),
    ],
)
def test_quota_sizes_parse(text: str, value: int | None) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "ten", "-1", "1T", "1.5M"])
def test_bad_quota_sizes_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bytes(text)


def test_small_topology_addresses_are_on_the_lab_subnet() -> None:
    ms = machines("small")
    assert [m.name for m in ms] == ["mail01", "mail02", "webmail01"]
    assert all(m.machine_name.startswith(config.MACHINE_PREFIX) for m in ms)
    assert [m.address for m in ms] == ["10.77.0.11", "10.77.0.12", "10.77.0.13"]


def test_unknown_topology_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown topology"):
        machines("medium")


def test_ruleset_allows_only_the_given_mirror_and_resolvers() -> None:
    text = net.ruleset(["203.0.113.80"], ["10.255.255.53"])
    assert "elements = { 203.0.113.80 }" in text
    assert "elements = { 10.255.255.53 }" in text
    assert 'iifname "mclab0" counter drop' in text
