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


# Versions the distributions ship: what paths and package names follow from.
PHP = {("Ubuntu", 20): "7.4", ("Ubuntu", 22): "8.1", ("Ubuntu", 24): "8.3", ("Debian", 12): "8.2"}
POSTGRESQL = {
    ("Ubuntu", 20): "12",
    ("Ubuntu", 22): "14",
    ("Ubuntu", 24): "16",
    ("Debian", 12): "15",
}
# RoundCube 1.4 (Ubuntu 20.04) serves from /var/lib/roundcube; 1.5+ from public_html.
ROUNDCUBE_DOCROOT = {("Ubuntu", 20): "/var/lib/roundcube"}


@dataclass(frozen=True)
class Platform:
    distro: str
    major: int
    container: str  # "none" unless the host is a container (the lab's machines)

    @property
    def in_container(self) -> bool:
        return self.container != "none"

    @property
    def php(self) -> str:
        return PHP[(self.distro, self.major)]

    @property
    def postgresql(self) -> str:
        return POSTGRESQL[(self.distro, self.major)]

    @property
    def roundcube_docroot(self) -> str:
        return ROUNDCUBE_DOCROOT.get((self.distro, self.major), "/var/lib/roundcube/public_html")


def current() -> Platform:
    dist = host.get_fact(LinuxDistribution)
    name, major = dist.get("name") or "?", int(dist.get("major") or 0)
    if (name, major) not in SUPPORTED:
        raise RuntimeError(
            f"{host.name}: {name} {major} is not a supported platform "
            f"({', '.join(f'{n} {m}' for n, m in sorted(SUPPORTED))})"
        )
    return Platform(distro=name, major=major, container=host.get_fact(Virtualization))
