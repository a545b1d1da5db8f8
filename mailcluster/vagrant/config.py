"""Fixed names, paths and addresses of the Vagrant cluster (one place, reasons beside)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mailcluster.lab import config as lab_config
from mailcluster.lab import platforms as lab_platforms
from mailcluster.lab.system import LabError
from mailcluster.site import REPO_ROOT

PREFIX = "mcvagrant"  # machine-wide names: never the lab's "mclab"
NFT_TABLE = PREFIX  # family inet

# The private network the Vagrantfile gives the VMs (static addresses, .11, .12, ... in
# topology order, as in the lab), and libvirt's management network (DHCP; vagrant's own
# SSH). Neither collides with the lab's 10.77.0.0/24.
SUBNET = ipaddress.IPv4Network(os.environ.get("MAILCLUSTER_SUBNET", "10.78.0") + ".0/24")
GATEWAY = SUBNET.network_address + 1  # the host on the private network
FIRST_HOST = 11
CLIENT_ADDRESSES = [str(SUBNET.network_address + i) for i in range(2, 10)]
PRIVATE_NETWORK = PREFIX  # libvirt network name (the Vagrantfile uses the same)
MGMT_NETWORK = f"{PREFIX}-mgmt"
MGMT_SUBNET = ipaddress.IPv4Network("10.78.1.0/24")

# Runtime (daemons' configs, logs, pids) and secrets: outside the checkout, because the
# site schema refuses TLS paths into the repository (other than the lab's .lab/).
VAR = Path("/var/lib") / PREFIX
RUN = VAR / "run"
SECRETS = VAR / "secrets"
# Caches kept across runs: the boxes, the package cache.
CACHE = Path("/var/cache") / PREFIX
APT_CACHE = CACHE / "apt"
# The checkout's state (git-ignored with .vagrant/): ssh_config, known_hosts, site file,
# the outbound-mail sink, state.json.
STATE = REPO_ROOT / ".vagrant" / "mailcluster"
STATE_FILE = STATE / "state.json"
SITE_FILE = STATE / "site.yaml"
SSH_CONFIG = STATE / "ssh_config"
KNOWN_HOSTS = STATE / "known_hosts"
SINK_DIR = STATE / "sink"

# Host services on the private network's host address. Other ports than the lab's, so
# both can run at once on one host.
APT_PROXY_PORT = 3151
SINK_PORT = 25
NTP_PORT = 123

# The locally built libvirt boxes (mailcluster/vagrant/box.py; there is no box download
# here), one per lab platform (mailcluster/lab/platforms.py) that has a box recipe.
BOX_NAMES = {
    "ubuntu20.04": "mailcluster/ubuntu2004",
    "debian12": "mailcluster/debian12",
}
# The default: production's Ubuntu 20.04, as the lab's (platforms.DEFAULT).
DEFAULT_PLATFORM = lab_platforms.DEFAULT
BOX_NAME = BOX_NAMES[DEFAULT_PLATFORM]
BOX_DISK_GB = 20


def platform_of_box(box: str) -> str | None:
    """The lab platform of one of the boxes built here; None for any other box."""
    return next((p for p, name in BOX_NAMES.items() if name == box), None)


@dataclass(frozen=True)
class Boxes:
    """Which box each VM boots: mail (and other) hosts ``box``, webmail hosts
    ``webmail_box``; the platforms are None for boxes not built here."""

    box: str
    platform: str | None
    webmail_box: str
    webmail_platform: str | None

    def built_here(self) -> list[str]:
        """The platforms whose boxes `up` builds and registers (in use, made here)."""
        return list(dict.fromkeys(p for p in (self.platform, self.webmail_platform) if p))


def selected_boxes(env: Mapping[str, str] | None = None) -> Boxes:
    """The boxes from the environment, as the lab picks machines' platforms:

    - MAILCLUSTER_BOX names the box (one built here, e.g. mailcluster/debian12, or any
      other, e.g. generic/ubuntu2004); else MAILCLUSTER_PLATFORM names the platform whose
      box is built here (ubuntu20.04, debian12); else Ubuntu 20.04.
    - Webmail hosts: MAILCLUSTER_WEBMAIL_BOX; else, for a box built here, the box of the
      platform the lab gives webmail hosts (the same one when its archive has a RoundCube
      with the known fixes, else Debian 12: the deploy refuses an unfixed RoundCube,
      mailcluster/webmail_security.py); else the same box.
    """
    from mailcluster.lab.topology import webmail_platform

    env = os.environ if env is None else env
    box = env.get("MAILCLUSTER_BOX", "")
    if box:
        platform = platform_of_box(box)
    else:
        platform = env.get("MAILCLUSTER_PLATFORM", "") or DEFAULT_PLATFORM
        if platform not in BOX_NAMES:
            raise LabError(
                f"MAILCLUSTER_PLATFORM={platform!r}: a box is built here for "
                f"{', '.join(BOX_NAMES)} only (or name any box in MAILCLUSTER_BOX)"
            )
        box = BOX_NAMES[platform]
    web_box = env.get("MAILCLUSTER_WEBMAIL_BOX", "")
    if web_box:
        web_platform = platform_of_box(web_box)
    elif platform:
        web_platform = webmail_platform(platform)
        web_box = BOX_NAMES[web_platform]
    else:
        web_box, web_platform = box, None
    return Boxes(box, platform, web_box, web_platform)


DOMAIN = lab_config.DOMAIN
TEST_USERS = lab_config.TEST_USERS
FIRST_UID = lab_config.FIRST_UID

# Under TCG a guest boots in about a minute; this is the give-up point for SSH.
BOOT_TIMEOUT_S = 600
