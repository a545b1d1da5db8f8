"""The lab's machines (python -m mailcluster.lab up), read from the lab's state."""

import json

from mailcluster import inventory
from mailcluster.lab import config

if not config.STATE_FILE.exists():
    raise SystemExit("mailcluster: the lab is not up; run: python -m mailcluster.lab up")

_site = inventory.load_or_exit(config.SITE_FILE)
_ssh = {
    "ssh_user": "root",
    "ssh_key": str(config.SECRETS / "ssh" / "id_ed25519"),
    "ssh_known_hosts_file": str(config.STATE / "known_hosts"),
    "ssh_strict_host_key_checking": "yes",
}
_hosts = json.loads(config.STATE_FILE.read_text())["hosts"]
_groups = inventory.groups(_site, {h["name"]: _ssh for h in _hosts})

mail = _groups["mail"]
webmail = _groups["webmail"]
db = _groups["db"]
