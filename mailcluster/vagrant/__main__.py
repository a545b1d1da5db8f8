"""``python -m mailcluster.vagrant box|up|status|info|destroy``: the Vagrant cluster."""

from __future__ import annotations

import argparse
import json
import sys

from mailcluster.lab.system import LabError
from mailcluster.lab.topology import TOPOLOGIES
from mailcluster.vagrant import box, cluster, config, host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailcluster.vagrant", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_box = sub.add_parser(
        "box",
        help="build (once) and register the libvirt boxes `up` would boot (default: "
        "Ubuntu 20.04 for mail nodes, Debian 12 for webmail), or one platform's",
    )
    p_box.add_argument("--platform", choices=sorted(config.BOX_NAMES))
    p_up = sub.add_parser("up", help="networks, host services, `vagrant up`, users, site file")
    p_up.add_argument("--topology", choices=TOPOLOGIES, default="small")
    sub.add_parser("check", help="say what the libvirt provider is missing (exit 1 if any)")
    sub.add_parser("status", help="show the VMs; exit 0 if all answer SSH, 3 otherwise")
    p_info = sub.add_parser("info", help="what tests need (same shape as the lab's info)")
    p_info.add_argument("--json", action="store_true")
    sub.add_parser("destroy", help="`vagrant destroy`, networks, nft table, host services")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "box":
            wanted = [args.platform] if args.platform else config.selected_boxes().built_here()
            if not wanted:
                print("the selected boxes (MAILCLUSTER_BOX) are not built here", file=sys.stderr)
            for platform in wanted:
                print(box.ensure(platform))
        elif args.cmd == "check":
            problem = host.libvirt_problem()
            if problem:
                print(f"vagrant: {problem}", file=sys.stderr)
                return 1
            print("vagrant, vagrant-libvirt, libvirt and qemu are ready")
        elif args.cmd == "up":
            cluster.up(args.topology)
        elif args.cmd == "status":
            healthy, text = cluster.status()
            print(text)
            return 0 if healthy else 3
        elif args.cmd == "info":
            data = cluster.info()
            if args.json:
                print(json.dumps(data, indent=2))
            else:
                print(f"domain     {data['domain']}\nCA         {data['ca_cert']}")
                print(f"ssh        ssh -F {data['ssh_config']} NAME")
                for h in data["hosts"]:
                    print(f"host       {h['name']:<12} {h['address']:<12} {','.join(h['groups'])}")
                for k, v in data["endpoints"].items():
                    print(f"{k:<10} {v}")
                for a in data["accounts"]:
                    print(f"account    {a['user']} {a['password']}")
                print(f"sink       {data['sink']} (SMTP {data['sink_smtp']})")
        elif args.cmd == "destroy":
            cluster.destroy()
    except LabError as exc:
        print(f"vagrant: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
