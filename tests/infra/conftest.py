"""testinfra over every lab host: `host` is parametrized by the lab's machines."""

from __future__ import annotations

import pytest
import testinfra

from tests.conftest import REPO, lab_state_hosts


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "host" in metafunc.fixturenames:
        names = [h["name"] for h in lab_state_hosts()] or ["(lab is not up)"]
        metafunc.parametrize("host", names, indirect=True, scope="session")


@pytest.fixture(scope="session")
def host(request: pytest.FixtureRequest, lab):  # noqa: ANN001 - testinfra's Host
    if request.param not in {h["name"] for h in lab["hosts"]}:
        pytest.fail("the lab is not up; run: make lab")
    return testinfra.get_host(f"ssh://{request.param}", ssh_config=lab["ssh_config"])


__all__ = ["REPO"]
