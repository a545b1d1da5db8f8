"""Known holes in the distributions' RoundCube, and the package versions that fix them.

The one place this is written. The webmail role checks the version apt would install
against this table *before installing*: a platform whose archive carries no fixed version
stops the run, naming the CVEs and the ways out. Where Ubuntu Pro is enabled, apt
offers its ESM builds, and those pass the check. Checked 2026-11-30 against the Debian
package's changelog and Ubuntu's security notices (OSV data; sources next to each entry).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import zip_longest


@dataclass(frozen=True)
class Hole:
    cve: str
    what: str
    upstream_fixed: tuple[str, ...]  # RoundCube releases that fixed it, per branch
    # The first package version that carries the fix, per (distribution, major release).
    # A release missing here has no fixed package at all.
    fixed: dict[tuple[str, int], str] = field(default_factory=dict)
    # Releases whose fix is in Ubuntu Pro's ESM archive only, not in the public one.
    pro_only: frozenset[tuple[str, int]] = frozenset()
    sources: tuple[str, ...] = ()


HOLES = (
    Hole(
        "CVE-2025-49113",
        "post-authentication remote code execution (PHP object deserialisation in "
        "program/actions/settings/upload.php); exploited in the wild",
        ("1.5.10", "1.6.11"),
        {
            ("Debian", 12): "1.6.5+dfsg-1+deb12u5",  # bookworm-security, 2025-06-02
            ("Ubuntu", 24): "1.6.6+dfsg-2ubuntu0.1",  # USN-7584-1
            ("Ubuntu", 22): "1.5.0+dfsg.1-2ubuntu0.1~esm4",
            ("Ubuntu", 20): "1.4.3+dfsg.1-1ubuntu0.1~esm5",
        },
        frozenset({("Ubuntu", 22), ("Ubuntu", 20)}),
        (
            "https://security-tracker.debian.org/tracker/CVE-2025-49113",
            "https://ubuntu.com/security/CVE-2025-49113 (USN-7584-1)",
            "roundcube-core 1.6.5+dfsg-1+deb12u14 changelog.Debian (#1107073)",
        ),
    ),
    Hole(
        "CVE-2023-43770",
        "stored XSS through a link reference in a plain-text message; exploited in the "
        "wild (CISA KEV)",
        ("1.4.14", "1.5.4", "1.6.3"),
        {
            ("Debian", 12): "1.6.3+dfsg-1~deb12u1",  # bookworm point release, 2023-09-25
            ("Ubuntu", 24): "1.6.6+dfsg-1",  # the release's own version
            ("Ubuntu", 22): "1.5.0+dfsg.1-2ubuntu0.1~esm2",  # USN-6654-1
            ("Ubuntu", 20): "1.4.3+dfsg.1-1ubuntu0.1~esm3",  # USN-6654-1
        },
        frozenset({("Ubuntu", 22), ("Ubuntu", 20)}),
        (
            "https://security-tracker.debian.org/tracker/CVE-2023-43770",
            "https://ubuntu.com/security/CVE-2023-43770 (USN-6654-1)",
        ),
    ),
)

# What the deploy tells an operator whose platform has no fixed RoundCube.
WAYS_OUT = (
    "put the webmail hosts on a platform whose archive has a fixed RoundCube "
    "(Debian 12, the README's layout: SERVICE.md's 20 machines run Dovecot and Exim, "
    "a webmail host may run another OS), or enable Ubuntu Pro (ESM Apps) on them, whose "
    "archive carries the fixes"
)
# The site setting that installs an unfixed RoundCube anyway: for tests of the old code
# path on throw-away machines, never for production.
OVERRIDE = "webmail.allow_known_vulnerable_roundcube"


def platform_has_fixes(distro: str, major: int) -> bool:
    """Does this release's public archive carry a RoundCube with every fix above?"""
    return all((distro, major) in h.fixed and (distro, major) not in h.pro_only for h in HOLES)


def unfixed(distro: str, major: int, candidate: str) -> list[Hole]:
    """The holes that ``candidate`` (a package version of roundcube-core) still has."""
    out = []
    for h in HOLES:
        fix = h.fixed.get((distro, major))
        if fix is None or compare_versions(candidate, fix) < 0:
            out.append(h)
    return out


def refusal(host: str, distro: str, major: int, candidate: str, holes: list[Hole]) -> str:
    names = ", ".join(
        f"{h.cve} ({h.what}; fixed upstream in {'/'.join(h.upstream_fixed)})" for h in holes
    )
    return (
        f"{host}: roundcube-core {candidate}, the version {distro} {major}'s archive "
        f"offers, has {names}. Ways out: {WAYS_OUT}. Sources: "
        + "; ".join(s for h in holes for s in h.sources)
    )


# -- Debian version comparison (deb-version(7)), enough for package versions ----------


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    while a or b:
        na = re.match(r"^\D*", a)
        nb = re.match(r"^\D*", b)
        sa, sb = (na.group(0) if na else ""), (nb.group(0) if nb else "")
        for ca, cb in zip_longest(sa, sb, fillvalue=""):
            oa = _order(ca) if ca else 0
            ob = _order(cb) if cb else 0
            if oa != ob:
                return -1 if oa < ob else 1
        a, b = a[len(sa) :], b[len(sb) :]
        da = re.match(r"^\d*", a)
        db = re.match(r"^\d*", b)
        ia, ib = (da.group(0) if da else ""), (db.group(0) if db else "")
        if int(ia or 0) != int(ib or 0):
            return -1 if int(ia or 0) < int(ib or 0) else 1
        a, b = a[len(ia) :], b[len(ib) :]
    return 0


def _split(v: str) -> tuple[int, str, str]:
    epoch, _, rest = v.rpartition(":") if ":" in v else ("0", "", v)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
    return int(epoch or 0), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1, as ``dpkg --compare-versions`` orders two package versions."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)
