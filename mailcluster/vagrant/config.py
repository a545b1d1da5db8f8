"""Fixed names, paths and addresses of the Vagrant cluster (one place, reasons beside)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from mailcluster.lab import config as lab_config
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
# Caches kept across runs: the Debian 12 box, the package cache.
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

# The locally built Debian 12 libvirt box (there is no box download here).
BOX_NAME = "mailcluster/debian12"
BOX_DISK_GB = 20

DOMAIN = lab_config.DOMAIN
TEST_USERS = lab_config.TEST_USERS
FIRST_UID = lab_config.FIRST_UID

# Under TCG a Debian guest boots in about 50 s; this is the give-up point for SSH.
BOOT_TIMEOUT_S = 600
