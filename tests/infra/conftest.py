"""testinfra over every lab host: `host` is parametrized by the lab's machines."""

from __future__ import annotations

import pytest
import testinfra

from tests.conftest import REPO, lab_state_hosts


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`host`: every lab machine; `mail_host`: the machines of group `mail`."""
    hosts = lab_state_hosts()
    for fixture, names in (
        ("host", [h["name"] for h in hosts]),
        ("mail_host", [h["name"] for h in hosts if "mail" in h["groups"]]),
        ("webmail_host", [h["name"] for h in hosts if "webmail" in h["groups"]]),
    ):
        if fixture in metafunc.fixturenames:
            metafunc.parametrize(
                fixture, names or ["(lab is not up)"], indirect=True, scope="session"
            )


def _testinfra_host(request: pytest.FixtureRequest, lab):  # noqa: ANN001, ANN202
    if request.param not in {h["name"] for h in lab["hosts"]}:
        pytest.fail("the lab is not up; run: make lab")
    return testinfra.get_host(f"ssh://{request.param}", ssh_config=lab["ssh_config"])


@pytest.fixture(scope="session")
def host(request: pytest.FixtureRequest, lab):  # noqa: ANN001, ANN201 - testinfra's Host
    return _testinfra_host(request, lab)


@pytest.fixture(scope="session")
def mail_host(request: pytest.FixtureRequest, lab):  # noqa: ANN001, ANN201
    return _testinfra_host(request, lab)


@pytest.fixture(scope="session")
def webmail_host(request: pytest.FixtureRequest, lab):  # noqa: ANN001, ANN201
    return _testinfra_host(request, lab)


__all__ = ["REPO"]
