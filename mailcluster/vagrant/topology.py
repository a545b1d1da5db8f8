"""The Vagrant VMs of a topology: the lab's names, groups and order, and each VM's box.

``python -m mailcluster.vagrant.topology [small|full]`` prints them as JSON for the
Vagrantfile (so Vagrant, the lab and production agree on the machines, and `up` and the
Vagrantfile on the boxes): name, address on the private network (.11, .12, ... in
topology order), groups, box, and the lab platform of the box when it is built here.
Boxes come from the environment (``config.selected_boxes``): by default mail nodes boot
Ubuntu 20.04 and webmail hosts Debian 12, as in the lab.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from mailcluster.lab.topology import machines
from mailcluster.vagrant import config


def vms(topology: str, boxes: config.Boxes | None = None) -> list[dict[str, Any]]:
    b = config.selected_boxes() if boxes is None else boxes
    base = config.SUBNET.network_address + config.FIRST_HOST
    out = []
    for i, m in enumerate(machines(topology)):
        web = "webmail" in m.groups
        vm: dict[str, Any] = {
            "name": m.name,
            "address": str(base + i),
            "groups": list(m.groups),
            "box": b.webmail_box if web else b.box,
        }
        platform = b.webmail_platform if web else b.platform
        if platform:
            vm["platform"] = platform
        out.append(vm)
    return out


def main() -> int:
    from mailcluster.lab.system import LabError

    topology = sys.argv[1] if len(sys.argv) > 1 else "small"
    try:
        print(json.dumps(vms(topology)))
    except (LabError, ValueError) as exc:
        print(f"mailcluster.vagrant.topology: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
