"""What differs between the distributions we run on, decided from facts in one place.

Production is Ubuntu 20.04; Ubuntu 22.04/24.04 and Debian 12 (the lab) work too.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import FactBase
from pyinfra.facts.server import LinuxDistribution

SUPPORTED = {("Ubuntu", 20), ("Ubuntu", 22), ("Ubuntu", 24), ("Debian", 12)}


class Virtualization(FactBase[str]):
    """``systemd-detect-virt --container``: "none" on a VM or metal, e.g. "systemd-nspawn"."""

    def command(self) -> str:
        return "systemd-detect-virt --container || true"

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else "none"


@dataclass(frozen=True)
class Platform:
    distro: str
    major: int
    container: str  # "none" unless the host is a container (the lab's machines)

    @property
    def in_container(self) -> bool:
        return self.container != "none"


def current() -> Platform:
    dist = host.get_fact(LinuxDistribution)
    name, major = dist.get("name") or "?", int(dist.get("major") or 0)
    if (name, major) not in SUPPORTED:
        raise RuntimeError(
            f"{host.name}: {name} {major} is not a supported platform "
            f"({', '.join(f'{n} {m}' for n, m in sorted(SUPPORTED))})"
        )
    return Platform(distro=name, major=major, container=host.get_fact(Virtualization))
