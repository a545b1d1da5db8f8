"""``python -m mailcluster.lab up|down|status|info|quota|add|drain|remove|stop|start``: the
lab CLI."""

from __future__ import annotations

import argparse
import json
import re
import sys

from mailcluster.lab import config, core, homes
from mailcluster.lab.platforms import DEFAULT, PLATFORMS, WEBMAIL_FALLBACK
from mailcluster.lab.system import LabError
from mailcluster.lab.topology import TOPOLOGIES

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_bytes(text: str) -> int | None:
    if text.lower() == "none":
        return None
    m = re.fullmatch(r"(\d+)([KMG]?)i?B?", text.strip(), re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected bytes like 5000000, 10M, 1G or none")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailcluster.lab", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="boot the lab (idempotent; clears a killed run's leftovers)")
    p_up.add_argument("--topology", choices=TOPOLOGIES, default="small")
    p_up.add_argument(
        "--platform",
        choices=PLATFORMS,
        default=DEFAULT,
        help=f"the machines' OS (default: {DEFAULT}, production's)",
    )
    p_up.add_argument(
        "--webmail-platform",
        choices=PLATFORMS,
        help="webmail hosts' OS (default: the platform's own where its RoundCube has the "
        f"known security fixes, else {WEBMAIL_FALLBACK})",
    )
    p_down = sub.add_parser("down", help="stop the lab and remove everything it made")
    p_down.add_argument(
        "--purge",
        action="store_true",
        help="also remove caches (base image, packages) and generated secrets",
    )
    sub.add_parser("status", help="show the machines; exit 0 if all are up, 3 otherwise")
    p_info = sub.add_parser("info", help="what tests and tools need to reach the lab")
    p_info.add_argument("--json", action="store_true")
    p_quota = sub.add_parser("quota", help="set a test user's home quota (bytes, 10M, none)")
    p_quota.add_argument("user")
    p_quota.add_argument("bytes", type=parse_bytes)
    p_add = sub.add_parser("add", help="boot one more machine (e.g. a third mail node)")
    p_add.add_argument("name")
    p_add.add_argument("--groups", default="mail", help="comma-separated (default: mail)")
    p_add.add_argument("--platform", choices=PLATFORMS, help="its OS (default: the lab's)")
    p_drain = sub.add_parser("drain", help="mark a mail node draining in the lab's site file")
    p_drain.add_argument("name")
    p_rm = sub.add_parser("remove", help="power a (drained) machine off and delete it")
    p_rm.add_argument("name")
    p_rm.add_argument("--force", action="store_true", help="even a mail node not drained")
    p_stop = sub.add_parser(
        "stop", help="cut a machine's power (its processes killed at once); its disk is kept"
    )
    p_stop.add_argument("name")
    p_start = sub.add_parser("start", help="boot a stopped machine again, with its disk")
    p_start.add_argument("name")
    args = parser.parse_args(argv)

    try:
        if args.cmd == "up":
            core.up(args.topology, args.platform, args.webmail_platform)
        elif args.cmd == "down":
            core.down(purge=args.purge)
        elif args.cmd == "status":
            healthy, text = core.status()
            print(text)
            return 0 if healthy else 3
        elif args.cmd == "info":
            data = core.info()
            if args.json:
                print(json.dumps(data, indent=2))
            else:
                print(f"domain     {data['domain']}\nCA         {data['ca_cert']}")
                print(f"platform   {data['platform']}")
                print(f"ssh        ssh -F {data['ssh_config']} NAME")
                for h in data["hosts"]:
                    print(
                        f"host       {h['name']:<12} {h['address']:<12} "
                        f"{','.join(h['groups']):<12} {h['platform']}"
                    )
                for k, v in data["endpoints"].items():
                    print(f"{k:<10} {v}")
                for a in data["accounts"]:
                    print(f"account    {a['user']} {a['password']}")
                print(f"sink       {data['sink']} (SMTP {data['sink_smtp']})")
        elif args.cmd == "add":
            core.add(args.name, [g for g in args.groups.split(",") if g], args.platform)
        elif args.cmd == "drain":
            core.drain(args.name)
        elif args.cmd == "stop":
            core.stop(args.name)
        elif args.cmd == "start":
            core.start(args.name)
        elif args.cmd == "remove":
            core.remove(args.name, force=args.force)
        elif args.cmd == "quota":
            if args.user not in config.TEST_USERS:
                raise LabError(f"{args.user}: not a lab test user ({', '.join(config.TEST_USERS)})")
            homes.set_quota(args.user, args.bytes)
            print(f"{args.user}: home quota {args.bytes if args.bytes is not None else 'none'}")
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
