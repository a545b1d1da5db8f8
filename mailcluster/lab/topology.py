"""Which machines a lab topology has: the same names and groups as a real inventory."""

from __future__ import annotations

from dataclasses import dataclass

from mailcluster import site as site_mod
from mailcluster.lab import config, platforms


@dataclass(frozen=True)
class Machine:
    name: str  # the host name inside the machine and in inventories
    address: str
    groups: tuple[str, ...]
    platform: str = platforms.DEFAULT  # mailcluster/lab/platforms.py: "ubuntu20.04", ...

    @property
    def machine_name(self) -> str:  # the nspawn machine name: prefixed, found by `down`
        return f"{config.MACHINE_PREFIX}{self.name}"


# small: the least that exercises everything (two mail nodes prove proxying and
# per-user backends; the webmail node holds the database, as a small site would).
SMALL = [("mail01", ("mail",)), ("mail02", ("mail",)), ("webmail01", ("webmail", "db"))]

TOPOLOGIES = ("small", "full")


def webmail_platform(platform: str) -> str:
    """Where the lab puts webmail hosts when mail nodes run ``platform``: the same, if its
    archive has a RoundCube with the known code-execution fixes, else the fallback (the
    layout the README recommends; mailcluster/webmail_security.py has the table)."""
    from mailcluster import webmail_security

    p = platforms.get(platform)
    if webmail_security.platform_has_fixes(p.distro, p.major):
        return platform
    return platforms.WEBMAIL_FALLBACK


def machines(
    topology: str, platform: str = platforms.DEFAULT, webmail: str | None = None
) -> list[Machine]:
    """The topology's machines: mail (and other) hosts on ``platform``, webmail hosts on
    ``webmail`` (default: :func:`webmail_platform`)."""
    web = webmail or webmail_platform(platform)
    if topology == "small":
        layout = SMALL
    elif topology == "full":
        # full: the production inventory's hosts, same names and groups, lab addresses.
        prod = site_mod.load(config.PRODUCTION_SITE)
        layout = [(h.name, tuple(h.groups)) for h in prod.hosts]
    else:
        raise ValueError(f"unknown topology {topology!r} (choose from {', '.join(TOPOLOGIES)})")
    base = config.SUBNET.network_address + config.FIRST_HOST
    return [
        Machine(name, str(base + i), groups, web if "webmail" in groups else platform)
        for i, (name, groups) in enumerate(layout)
    ]


def main() -> None:
    """``python -m mailcluster.lab.topology [small|full]``: names and groups as JSON
    (the Vagrantfile reads this, so Vagrant, the lab and production share one topology)."""
    import json
    import sys

    topology = sys.argv[1] if len(sys.argv) > 1 else "small"
    print(json.dumps([{"name": m.name, "groups": list(m.groups)} for m in machines(topology)]))


if __name__ == "__main__":
    main()
