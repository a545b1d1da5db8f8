"""What differs between the distributions we run on, decided from facts in one place.

Supported: Ubuntu 20.04 (production; the lab's default), Ubuntu 24.04 (where production
is going: docs/RUNBOOK.md "Upgrade the OS") and Debian 12, each because the deploy and
its tests run there (`make test`: 20.04 in the first lab, all three mixed in the second;
README "Platforms"). A platform no test runs is not in SUPPORTED: the deploy stops on
it, naming the ones that are. The tables below also carry Ubuntu 22.04, ready for the
day a test runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import FactBase
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.server import LinuxDistribution

SUPPORTED = {("Ubuntu", 20), ("Ubuntu", 24), ("Debian", 12)}


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
# chrony's major version: 4.0 added `chronyd -p` (print the parsed configuration, the
# validator) and made its seccomp filter (-F 1) fit for use; 3.5's manual warns that
# the filter may kill chronyd in normal operation unless known to work on the system.
CHRONY = {("Ubuntu", 20): 3, ("Ubuntu", 22): 4, ("Ubuntu", 24): 4, ("Debian", 12): 4}
# A chrony 3 check: parse a copy without the lines that name state files (driftfile is
# rewritten when chronyd -Q exits), in client-only mode (-Q: no clock control, no ports)
# for one second; a bad line is a "Fatal error" (the exit code is 1 either way).
_CHRONY3_CHECK = (
    "sed -E '/^[[:space:]]*(driftfile|dumpdir|logdir|pidfile|rtcfile)([[:space:]]|$)/d' "
    "{path} > {path}.check && out=$(timeout 20 chronyd -Q -t 1 -f {path}.check 2>&1); "
    'rm -f {path}.check; ! printf "%s" "$out" | grep "Fatal error" >&2'
)
# RoundCube 1.4 (Ubuntu 20.04) serves from /var/lib/roundcube; 1.5+ from public_html.
ROUNDCUBE_DOCROOT = {("Ubuntu", 20): "/var/lib/roundcube"}
# RoundCube 1.6 renamed default_host/default_port and smtp_server/smtp_port to imap_host
# and smtp_host (host:port); 1.4 (20.04) and 1.5 (22.04) know only the old names.
ROUNDCUBE_LEGACY_OPTIONS = {("Ubuntu", 20), ("Ubuntu", 22)}


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
    def chrony_check(self) -> str:
        """The validator of a candidate chrony.conf ({path}), as managed_file takes it."""
        if CHRONY[(self.distro, self.major)] >= 4:
            return "chronyd -p -f {path} >/dev/null"
        return _CHRONY3_CHECK

    @property
    def chrony_seccomp(self) -> str:
        """chronyd's -F option: the filter on where chrony 4 runs; off (0) on chrony 3."""
        return "-F 1" if CHRONY[(self.distro, self.major)] >= 4 else "-F 0"

    @property
    def roundcube_legacy_options(self) -> bool:
        return (self.distro, self.major) in ROUNDCUBE_LEGACY_OPTIONS

    @property
    def roundcube_docroot(self) -> str:
        return ROUNDCUBE_DOCROOT.get((self.distro, self.major), "/var/lib/roundcube/public_html")


def current() -> Platform:
    dist = host.get_fact(LinuxDistribution)
    name, major = dist.get("name") or "?", int(dist.get("major") or 0)
    if (name, major) not in SUPPORTED:
        raise DeployError(
            f"{host.name}: {name} {major} is not a supported platform "
            f"({', '.join(f'{n} {m}' for n, m in sorted(SUPPORTED))}: the ones a test deploys; "
            "README 'Platforms'); no operation ran on any host"
        )
    return Platform(distro=name, major=major, container=host.get_fact(Virtualization))
