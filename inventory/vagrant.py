"""The Vagrant VMs (`python -m mailcluster.vagrant up`, or `vagrant up` by hand).

pyinfra inventory/vagrant.py deploy.py

Names and groups come from the site file; the VMs are reached as root on their private
addresses with the key Vagrant made for each (the Vagrantfile copies it to root).
- After `python -m mailcluster.vagrant up`: its site file and known_hosts
  (.vagrant/mailcluster/), host keys checked.
- After a plain `vagrant up`: MAILCLUSTER_SITE names the site file (its hosts must be the
  VMs, on the Vagrantfile's addresses); keys from `vagrant ssh-config`, host keys taken
  on first use, as Vagrant itself does.
"""

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from mailcluster import inventory, site
from mailcluster.vagrant import config


def _vagrant_keys() -> dict[str, str]:
    proc = subprocess.run(
        ["vagrant", "ssh-config"], cwd=site.REPO_ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"mailcluster: `vagrant ssh-config` failed: {proc.stderr.strip()}")
    keys: dict[str, str] = {}
    current = None
    for line in proc.stdout.splitlines():
        m = re.match(r"\s*(Host|IdentityFile)\s+(.+)", line)
        if m and m.group(1) == "Host":
            current = m.group(2).strip()
        elif m and current and current not in keys:
            keys[current] = m.group(2).strip().strip('"')
    return keys


def _from_ssh_config(path: Path) -> dict[str, dict[str, Any]]:
    """Per host: the key and known_hosts that `mailcluster.vagrant up` wrote."""
    out: dict[str, dict[str, Any]] = {}
    name = None
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "Host":
            name = parts[1]
            out[name] = {"ssh_user": "root", "ssh_strict_host_key_checking": "yes"}
        elif name and len(parts) == 2 and parts[0] == "IdentityFile":
            out[name]["ssh_key"] = parts[1]
        elif name and len(parts) == 2 and parts[0] == "UserKnownHostsFile":
            out[name]["ssh_known_hosts_file"] = parts[1]
    return out


if os.environ.get(site.SITE_ENV):
    _site = inventory.load_or_exit(site.selected_path())
    _connect = {
        name: {"ssh_user": "root", "ssh_key": key, "ssh_strict_host_key_checking": "no"}
        for name, key in _vagrant_keys().items()
    }
elif config.STATE_FILE.exists():
    _site = inventory.load_or_exit(config.SITE_FILE)
    _connect = _from_ssh_config(config.SSH_CONFIG)
else:
    raise SystemExit(
        "mailcluster: the Vagrant cluster is not up; run: python -m mailcluster.vagrant up "
        "(or set MAILCLUSTER_SITE to the site file of VMs you brought up with `vagrant up`)"
    )

_groups = inventory.groups(_site, _connect)

mail = _groups["mail"]
webmail = _groups["webmail"]
db = _groups["db"]
