"""The Vagrant VMs (`vagrant up`): names and groups from the shared topology, addresses
as the Vagrantfile assigns them, SSH keys from `.vagrant/`. The site file is named by
MAILCLUSTER_SITE (its hosts must be these VMs).
"""

import os
from pathlib import Path

from mailcluster import inventory, site
from mailcluster.lab.topology import machines

_topology = os.environ.get("MAILCLUSTER_TOPOLOGY", "small")
_provider = os.environ.get("VAGRANT_DEFAULT_PROVIDER", "libvirt")
if not os.environ.get(site.SITE_ENV):
    raise SystemExit("mailcluster: set MAILCLUSTER_SITE to the Vagrant cluster's site file")
_site = inventory.load_or_exit(site.selected_path())
_vm_names = {m.name for m in machines(_topology)}
_connect = {
    name: {
        "ssh_user": "vagrant",
        "ssh_key": str(Path(".vagrant/machines") / name / _provider / "private_key"),
        "_sudo": True,
    }
    for name in _vm_names
}
_groups = inventory.groups(_site, _connect)

mail = _groups["mail"]
webmail = _groups["webmail"]
db = _groups["db"]
