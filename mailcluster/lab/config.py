"""Fixed names, paths and addresses of the lab (one place; every reason next to its value)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from mailcluster.site import LAB_STATE, REPO_ROOT

# One prefix for every machine-wide resource, so leftovers are found whichever checkout
# made them (CI runs from a fresh clone right after the previous run's processes died).
PREFIX = "mclab"
BRIDGE = f"{PREFIX}0"
NFT_TABLE = PREFIX  # family inet
MACHINE_PREFIX = f"{PREFIX}-"

# Runtime (machines, homes image, daemons): removed by `down`.
VAR = Path("/var/lib") / PREFIX
MACHINES = VAR / "machines"
RUN = VAR / "run"
HOMES_IMAGE = VAR / "homes.img"
HOMES = VAR / "homes"
# Caches kept across labs (base image, packages): `down --purge` removes them too.
CACHE = Path("/var/cache") / PREFIX
APT_CACHE = CACHE / "apt"

# The checkout's git-ignored state: secrets (CA, SSH key, passwords), state.json, sink.
STATE = LAB_STATE
SECRETS = STATE / "secrets"
STATE_FILE = STATE / "state.json"
SINK_DIR = STATE / "sink"
SITE_FILE = STATE / "site.yaml"
SSH_CONFIG = STATE / "ssh_config"
PRODUCTION_SITE = REPO_ROOT / "group_data" / "site.yaml"

# A /24 that nothing on a developer's or CI's machine uses; .1 is the lab host.
SUBNET = ipaddress.IPv4Network("10.77.0.0/24")
GATEWAY = SUBNET.network_address + 1
FIRST_HOST = 11  # .11, .12, ... in topology order
# More addresses of the lab host on the bridge (.2 to .9): tests speak as other clients
# (failed logins from one address, brute-force blocks) without touching the main one.
CLIENT_ADDRESSES = [str(SUBNET.network_address + i) for i in range(2, 10)]
DOMAIN = "mailcluster.test"  # RFC 2606: .test never resolves outside.

# Platforms (distribution, suite, mirror, signing keys): mailcluster/lab/platforms.py.
# What a fresh cloud VM has before any deploy: systemd, sshd, networking, CA roots.
BASE_PACKAGES = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "iproute2",
    "iputils-ping",
    "ca-certificates",
    "python3",
    "sudo",
    "procps",
    "less",
]

# Host-side services for the lab, bound to the bridge address only.
APT_PROXY_PORT = 3150  # not 3142: a host may already run an apt-cacher-ng there
SINK_PORT = 25
NTP_PORT = 123

# Test users: same uid/gid on every mail node; homes are btrfs subvolumes with qgroups.
TEST_USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
FIRST_UID = 2001
# Benchmark users: Dovecot caps sessions per user and client address
# (mail_max_userip_connections), so thousands of sessions from the lab host need hundreds
# of users. Plain folders as homes (no quota), one shared generated password.
BENCH_USERS = 250
BENCH_PREFIX = "bench"
BENCH_FIRST_UID = 3001
# Homes image: sparse, so its size is a ceiling, not a cost.
HOMES_IMAGE_BYTES = 4 * 1024**3

# Boot budget: a warm `up` of the small topology takes seconds; this is the give-up point.
BOOT_TIMEOUT_S = 90
