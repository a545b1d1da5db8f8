"""mailctl: set or reset a user's IMAP/SMTP password, and list users with their backends.

    mailctl [-i INVENTORY] passwd USER            # prompts twice
    mailctl [-i INVENTORY] passwd USER --stdin    # one line from stdin (scripts, the
                                                  # registration page)
    mailctl [-i INVENTORY] users
    mailctl [-i INVENTORY] drain NODE             # empty a draining mail node's queue
    mailctl [-i INVENTORY] status [--json]        # the cluster's health; exit 0 OK,
                                                  # 1 WARNING, 2 CRITICAL, 3 UNKNOWN
    mailctl [-i INVENTORY] failover NODE [--force]  # a dead mail node's users served
                                                    # by the others (docs/RUNBOOK.md)
    mailctl [-i INVENTORY] rejoin NODE            # a failed node holds mail again after
                                                  # the next deploy
    mailctl [-i INVENTORY] upgrade OLD=NEW ... [--to ubuntu24.04] [--batch N]
                                                  # replace mail nodes by nodes on a new
                                                  # OS release, batch by batch; again
                                                  # with no node: resume

The password is never taken from the command line (argv is visible to every local user
in `ps`). The new {CRAM-MD5} hash goes into the site's password store (secrets_dir), then
every mail node gets its passdb replaced by rename; Dovecot re-reads it on the next
login, so the change takes effect without a restart and no login ever fails meanwhile.
"""

from __future__ import annotations

import argparse
import getpass
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mailcluster import accounts, upgrade_plan
from mailcluster import failover as failover_mod
from mailcluster import site as site_mod
from mailcluster import status as status_mod
from mailcluster import upgrade as upgrade_mod

REPO = Path(__file__).resolve().parent.parent
DEFAULT_INVENTORY = "inventory/production.py"
# Long enough to resist guessing over the network; the old system had no rule at all.
MIN_PASSWORD_LENGTH = 8


class MailctlError(Exception):
    pass


def load_inventory(inventory: str) -> tuple[site_mod.Site, dict[str, dict[str, Any]]]:
    """The site the inventory selects (as pyinfra would load it), validated, and the
    inventory's connection data per host (ssh_hostname, ssh_user, ssh_key, ...)."""
    path = Path(inventory)
    if not path.is_absolute():
        path = REPO / path
    if not path.exists():
        raise MailctlError(f"{inventory}: no such inventory")
    names = runpy.run_path(str(path))  # selects the site file, exits 2 on an invalid one
    connect: dict[str, dict[str, Any]] = {}
    for value in names.values():
        if isinstance(value, list):
            for item in value:
                if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], dict):
                    connect.setdefault(str(item[0]), dict(item[1]))
    return site_mod.current(), connect


def load_site(inventory: str) -> site_mod.Site:
    """The site the inventory selects (as pyinfra would load it): validated."""
    return load_inventory(inventory)[0]


def status(inventory: str, as_json: bool) -> int:
    """Print the cluster's health; returns the Nagios exit status."""
    started = time.monotonic()
    try:
        site, connect = load_inventory(inventory)
        hosts = status_mod.collect(site, connect)
        findings = status_mod.judge(hosts, site.monitoring)
    except (MailctlError, site_mod.SiteError, OSError) as exc:
        print(f"MAILCLUSTER UNKNOWN - {exc}")
        return status_mod.UNKNOWN
    seconds = time.monotonic() - started
    if as_json:
        print(status_mod.as_json(hosts, findings, seconds))
    else:
        print(status_mod.report(hosts, findings, seconds))
    return status_mod.overall(findings)


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise MailctlError(f"password too short (at least {MIN_PASSWORD_LENGTH} characters)")
    if any(c in password for c in "\r\n\0"):
        raise MailctlError("password must not contain line breaks or NUL")


def set_password(inventory: str, user: str, password: str) -> None:
    """Store ``user``'s new password hash and push it to every mail node.

    The registration page calls this too. Raises MailctlError; if the push to a node
    fails, the store already holds the new hash and the next deploy or push converges.
    """
    if not accounts.USER_RE.match(user):
        raise MailctlError(f"{user!r} is not a valid user name")
    check_password(password)
    site = load_site(inventory)
    with accounts.locked(site.secrets_dir, "store"):
        hashes = accounts.read_passwords(site.secrets_dir)
        hashes[user] = accounts.cram_md5_hash(password)
        accounts.write_passwords(site.secrets_dir, hashes)
        mine = accounts.store_generation(site.secrets_dir)
    # One push at a time; a push renders the store as it is when it runs, so one that
    # started after this change was written carries it too: changes made together (the
    # registration page at term start) share pushes instead of queueing one each.
    with accounts.locked(site.secrets_dir, "push"):
        if accounts.pushed_generation(site.secrets_dir) >= mine:
            return
        current = accounts.store_generation(site.secrets_dir)
        push(inventory)
        accounts.record_pushed(site.secrets_dir, current)


def _run_deploy(inventory: str, deploy_file: str, limit: str, failure: str) -> None:
    """``pyinfra -y INVENTORY deploy_file --limit limit``; MailctlError(failure + the
    end of pyinfra's output) if it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "pyinfra", "-y", inventory, deploy_file, "--limit", limit],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise MailctlError(f"{failure}:\n{tail}")


def push(inventory: str) -> None:
    _run_deploy(
        inventory,
        "mailcluster/deploys/passdb.py",
        "mail",
        "pushing the passdb failed (the store has the new hash)",
    )


def drain(inventory: str, node: str) -> None:
    """Check a draining node serves no mailbox, and deliver its queue until empty."""
    site = load_site(inventory)
    h = next((x for x in site.in_group("mail") if x.name == node), None)
    if h is None:
        raise MailctlError(f"{node}: not a mail node of the site")
    if not h.draining and node not in site.failed_nodes():
        raise MailctlError(
            f"{node}: not marked draining; set `draining: true` on it in the site file and "
            "run the deploy first (docs/RUNBOOK.md, remove a mail node)"
        )
    _run_deploy(inventory, "mailcluster/deploys/drain.py", node, f"{node} is not drained")


def read_new_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    first = getpass.getpass("New IMAP/SMTP password: ")
    if getpass.getpass("Again: ") != first:
        raise MailctlError("the passwords differ; nothing changed")
    return first


UPGRADE_HELP = """\
Replace hosts by hosts on a new OS release, under load. Each new mail node is deployed
holding no mailbox; the old node's users move to it (sessions drained first), its queue
is delivered, it is removed, and the cluster's health is checked before the next batch.
Then the webmail and db hosts, one at a time (RoundCube's database copied). The plan is
kept in secrets_dir/upgrade.json: after any stop, run `mailctl upgrade` with no node
names to resume.

In the lab the command boots the new machines itself (`lab add --platform`) and removes
the old ones:
  mailctl -i inventory/lab.py upgrade mail01=mail04 mail02=mail05 webmail01=webmail02
In production it stops wherever you act (new hosts into the site file, DNS, power off)
and says what to do. docs/RUNBOOK.md, "Upgrade the OS".
"""


def main(argv: list[str] | None = None) -> int:
    # `mailctl users | head`: end quietly when the reader goes away.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = argparse.ArgumentParser(
        prog="mailctl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-i",
        "--inventory",
        default=DEFAULT_INVENTORY,
        help=f"pyinfra inventory (default {DEFAULT_INVENTORY})",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_passwd = sub.add_parser("passwd", help="set or reset a user's IMAP/SMTP password")
    p_passwd.add_argument("user")
    p_passwd.add_argument("--stdin", action="store_true", help="read the password from stdin")
    p_passwd.add_argument("password", nargs="*", help=argparse.SUPPRESS)
    sub.add_parser("users", help="users with an IMAP password, and their backend node")
    p_drain = sub.add_parser("drain", help="empty a draining mail node before removing it")
    p_drain.add_argument("node")
    p_status = sub.add_parser(
        "status", help="the cluster's health (exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)"
    )
    p_status.add_argument("--json", action="store_true", help="machine-readable")
    p_failover = sub.add_parser(
        "failover", help="serve a dead mail node's users by the other nodes (docs/RUNBOOK.md)"
    )
    p_failover.add_argument("node")
    p_failover.add_argument(
        "--force", action="store_true", help="it still answers, but you have fenced it"
    )
    p_rejoin = sub.add_parser("rejoin", help="a failed-over node holds mail again (deploy next)")
    p_rejoin.add_argument("node")
    p_upgrade = sub.add_parser(
        "upgrade",
        help="replace hosts by hosts on a new OS release: mail nodes a batch at a time, "
        "then webmail and db hosts one at a time, RoundCube's database copied "
        "(docs/RUNBOOK.md, Upgrade the OS)",
        description=UPGRADE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_upgrade.add_argument(
        "pairs",
        nargs="*",
        metavar="OLD=NEW",
        help="an old host and its replacement; omit to resume",
    )
    p_upgrade.add_argument(
        "--to", default="ubuntu24.04", help="the new hosts' OS (default ubuntu24.04)"
    )
    p_upgrade.add_argument(
        "--batch", type=int, default=1, help="mail nodes replaced at once (default 1)"
    )
    args = parser.parse_args(argv)
    if args.cmd == "status":
        return status(args.inventory, args.json)

    try:
        if args.cmd == "passwd":
            if args.password:
                raise MailctlError(
                    "passwords are never taken on the command line (use the prompt or --stdin)"
                )
            password = read_new_password(args.stdin)
            set_password(args.inventory, args.user, password)
            print(f"{args.user}: password set on every mail node")
        elif args.cmd == "drain":
            drain(args.inventory, args.node)
            print(f"{args.node}: drained (no mailbox served, queue empty); safe to power off")
        elif args.cmd == "failover":
            failover_mod.failover(
                args.inventory, load_site(args.inventory), args.node, force=args.force
            )
            print(
                f"{args.node}: when it boots it stays fenced until a deploy; then "
                f"`mailctl drain {args.node}` delivers its queue (docs/RUNBOOK.md)"
            )
        elif args.cmd == "rejoin":
            failover_mod.rejoin(load_site(args.inventory), args.node)
            print(f"{args.node}: no longer failed; run the deploy (its users move back)")
        elif args.cmd == "upgrade":
            upgrade_mod.upgrade(
                args.inventory, upgrade_mod.parse_pairs(args.pairs), args.to, args.batch
            )
            print("upgrade done: every old node replaced")
        elif args.cmd == "users":
            site = load_site(args.inventory)
            for user in sorted(accounts.read_passwords(site.secrets_dir)):
                backend = site.backend_of(user)
                pinned = " (override)" if user in site.backend_overrides else ""
                print(f"{user}\t{backend}{pinned}")
    except (
        MailctlError,
        failover_mod.FailoverError,
        upgrade_mod.UpgradeError,
        upgrade_plan.PlanError,
        site_mod.SiteError,
        ValueError,
    ) as exc:
        print(f"mailctl: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
