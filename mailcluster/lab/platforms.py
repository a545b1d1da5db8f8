"""The platforms a lab machine can run: each distribution's archive, suite and signing keys.

One entry per platform the lab boots (DESIGN.md's contract: `--platform P`). Whether the
*deploy* supports a platform is `mailcluster.platform.SUPPORTED`: only what a test runs.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mailcluster.lab.system import LabError

UBUNTU_MIRROR = "http://archive.ubuntu.com/ubuntu"
UBUNTU_SECURITY = "http://security.ubuntu.com/ubuntu"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"

# The archive signing keys, pinned here by full fingerprint. debootstrap is given a keyring
# holding these keys only, exported from the host's keyring package: a key is trusted
# because its fingerprint is written in this repository, never because it was downloaded.
# Ubuntu: "Ubuntu Archive Automatic Signing Key (2012) <ftpmaster@ubuntu.com>" signs
# every release's Release file up to 22.04; "(2018)" signs them from 18.04 on.
UBUNTU_KEYS = (
    "790BC7277767219C42C86F933B4FE6ACC0B21F32",  # (2012)
    "F6ECB3762474EDA9D21B7022871920D1991BC93C",  # (2018)
)
UBUNTU_KEYRING = Path("/usr/share/keyrings/ubuntu-archive-keyring.gpg")
# A Debian lab host has no package with Ubuntu's keyring: it is taken from Ubuntu's own
# keyring package, checked against this checksum before it is opened, and then only the
# pinned keys above are exported from it.
UBUNTU_KEYRING_DEB = "pool/main/u/ubuntu-keyring/ubuntu-keyring_2021.03.26_all.deb"
UBUNTU_KEYRING_DEB_SHA256 = "0d0e7ed6b112f5d03eabf3c7eb01ebdacf9c57714b279e90495cfc58c8c4520f"
# Debian 12: "Debian Stable Release Key (12/bookworm)" and the bookworm archive keys.
DEBIAN_KEYS = (
    "4D64FEC119C2029067D6E791F8D2585B8783D481",  # Debian Stable Release Key (12/bookworm)
    "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8",  # Debian 12/bookworm archive signing key
    "05AB90340C0C5E797F44A8C8254CF3B5AEC0A8F0",  # Debian 12/bookworm security archive key
)
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


@dataclass(frozen=True)
class LabPlatform:
    name: str  # the lab's name for it: --platform ubuntu20.04
    distro: str  # as /etc/os-release's NAME starts: "Ubuntu", "Debian"
    version: str  # VERSION_ID: "20.04", "12"
    suite: str
    mirror: str
    security_mirror: str
    components: tuple[str, ...]
    host_keyring: Path  # where the host's keyring package puts the archive keys
    keys: tuple[str, ...]  # the fingerprints debootstrap may trust, nothing else
    # debootstrap's script for the family: every Ubuntu suite is `gutsy`'s, every Debian
    # one `sid`'s; named outright because the host's debootstrap may predate the suite
    # (Debian 12's has no `noble`).
    script: str

    def debootstrap_script(self) -> str:
        return f"/usr/share/debootstrap/scripts/{self.script}"

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def sources_list(self) -> str:
        comps = " ".join(self.components)
        return (
            "# Written by mailcluster's lab base image.\n"
            f"deb {self.mirror} {self.suite} {comps}\n"
            f"deb {self.mirror} {self.suite}-updates {comps}\n"
            f"deb {self.security_mirror} {self.suite}-security {comps}\n"
        )

    def mirror_urls(self) -> tuple[str, str]:
        return (self.mirror, self.security_mirror)


def _ubuntu(version: str, suite: str) -> LabPlatform:
    return LabPlatform(
        f"ubuntu{version}",
        "Ubuntu",
        version,
        suite,
        UBUNTU_MIRROR,
        UBUNTU_SECURITY,
        ("main", "universe"),
        UBUNTU_KEYRING,
        UBUNTU_KEYS,
        "gutsy",
    )


PLATFORMS = {
    p.name: p
    for p in (
        _ubuntu("20.04", "focal"),
        _ubuntu("22.04", "jammy"),
        _ubuntu("24.04", "noble"),
        LabPlatform(
            "debian12",
            "Debian",
            "12",
            "bookworm",
            DEBIAN_MIRROR,
            DEBIAN_SECURITY,
            ("main",),
            DEBIAN_KEYRING,
            DEBIAN_KEYS,
            "sid",
        ),
    )
}
# Production's OS (SERVICE.md): what the lab boots unless told otherwise.
DEFAULT = "ubuntu20.04"
# Where webmail hosts go when the mail nodes' platform ships no RoundCube with the known
# code-execution fixes (mailcluster/webmail_security.py): Debian 12, whose security team
# keeps RoundCube in main up to date. The layout the README recommends for production.
WEBMAIL_FALLBACK = "debian12"


def get(name: str) -> LabPlatform:
    try:
        return PLATFORMS[name]
    except KeyError:
        raise LabError(f"unknown platform {name!r} (choose from {', '.join(PLATFORMS)})") from None


def all_mirror_urls() -> list[str]:
    return sorted({u for p in PLATFORMS.values() for u in p.mirror_urls()})


def fingerprints(keyring: Path) -> set[str]:
    """Primary-key fingerprints in an OpenPGP keyring file (gpg, no trust database)."""
    with tempfile.TemporaryDirectory(prefix="mclab-gpg-") as home:
        out = subprocess.run(
            ["gpg", "--homedir", home, "--batch", "--with-colons", "--show-keys", str(keyring)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    found: set[str] = set()
    want_fpr = False
    for line in out.splitlines():
        kind = line.split(":", 1)[0]
        if kind == "pub":
            want_fpr = True
        elif kind == "fpr" and want_fpr:
            found.add(line.split(":")[9])
            want_fpr = False
        elif kind == "sub":
            want_fpr = False
    return found


def _source_keyring(p: LabPlatform, work: Path, proxy: str | None) -> Path:
    """The host's keyring for the platform; for Ubuntu on a host without one, the keyring
    from Ubuntu's package (its checksum pinned above)."""
    if p.host_keyring.exists() or p.distro != "Ubuntu":
        return p.host_keyring
    deb = work / Path(UBUNTU_KEYRING_DEB).name
    if not deb.exists() or _sha256(deb) != UBUNTU_KEYRING_DEB_SHA256:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"http": proxy} if proxy else {})
        )
        with opener.open(f"{p.mirror}/{UBUNTU_KEYRING_DEB}", timeout=60) as resp:
            deb.write_bytes(resp.read())
    got = _sha256(deb)
    if got != UBUNTU_KEYRING_DEB_SHA256:
        deb.unlink()
        raise LabError(
            f"{p.mirror}/{UBUNTU_KEYRING_DEB}: sha256 {got}, expected "
            f"{UBUNTU_KEYRING_DEB_SHA256} (pinned in mailcluster/lab/platforms.py); not trusted"
        )
    extracted = work / "ubuntu-keyring"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(extracted)], check=True)
    return extracted / "usr/share/keyrings/ubuntu-archive-keyring.gpg"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pinned_keyring(p: LabPlatform, dest: Path, proxy: str | None = None) -> Path:
    """A keyring holding exactly the platform's pinned keys, for debootstrap --keyring.
    Stops when the source keyring lacks one of them (a wrong or tampered keyring)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    source = _source_keyring(p, dest.parent, proxy)
    if not source.exists():
        raise LabError(f"{source}: missing (scripts/host-deps installs it)")
    have = fingerprints(source)
    missing = [k for k in p.keys if k not in have]
    if missing:
        raise LabError(
            f"{source}: lacks the pinned {p.distro} archive key(s) {', '.join(missing)}; "
            "refusing to trust it"
        )
    with tempfile.TemporaryDirectory(prefix="mclab-gpg-") as home:
        exported = subprocess.run(
            [
                "gpg",
                "--homedir",
                home,
                "--batch",
                "--no-default-keyring",
                "--keyring",
                str(source),
                "--export",
                *p.keys,
            ],
            capture_output=True,
            check=True,
        ).stdout
    dest.write_bytes(exported)
    if fingerprints(dest) != set(p.keys):  # exactly these, nothing more
        raise LabError(f"{dest}: exported keyring does not hold exactly the pinned keys")
    return dest
