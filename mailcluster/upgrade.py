"""`mailctl upgrade OLD=NEW ... --to PLATFORM`: move the mail nodes to a new OS release,
one batch at a time, with the cluster serving throughout (docs/RUNBOOK.md, "Upgrade the
OS").

Each old node is replaced by a new one (an operator-installed host listed in the site
file, or in the lab a machine ``lab add`` boots on PLATFORM). The plan and how far it
got are kept in ``secrets_dir/upgrade.json`` (mailcluster/upgrade_plan.py), so a run
that stops, for any reason, is resumed by running ``mailctl upgrade`` again. A batch:

1. **pending**: its new nodes are up (lab: booted), run PLATFORM, and are deployed while
   they hold no mailbox yet (everyone else learns their names);
2. **joined**: the users of its old nodes are pinned to new nodes (upgrade_plan: at most
   two moves per user). The old nodes leave the clients' rotation and are marked
   draining (production: the operator takes them out of DNS, waits for the TTL, marks
   them in the site file and runs the command again; lab: ``lab drain``), and the deploy
   moves their users, each one's sessions ended on the old node before the new one
   serves them;
3. **moved** -> **drained**: the old nodes' Exim queues delivered until empty
   (deploys/drain.py, as `mailctl drain`), and the logins still held on them passed on
   (HELD_LOGINS_S after the move);
4. **removed**: the old nodes powered off and deleted (lab: ``lab remove``; production:
   the operator does it and runs the command again), the others deployed without them,
   and the cluster's health checked (`mailctl status` must not be CRITICAL) before the
   next batch starts.

Webmail and database hosts named in the pairs go after every mail batch, one at a time
(:func:`run_host_move`): the new host is added and deployed beside the old one (a new
webmail host serves at once: RoundCube's sessions are in the shared database and every
node has the same des_key); if the old host holds RoundCube's database, a short
maintenance window copies it (php-fpm stopped on every webmail host, ``pg_dump`` on the
old host, ``mailcluster-roundcube-restore`` on the new one, the webmail hosts deployed
to use it and started again); then the old host is removed.

When every batch is done the pins go, a last deploy puts each user on their node by
the plain hash (the second move, for some), and the plan file is deleted.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from mailcluster import accounts, passdb, upgrade_plan
from mailcluster import site as site_mod
from mailcluster import status as status_mod
from mailcluster.lab import platforms
from mailcluster.roles.db import DB_NAME, RESTORE_SCRIPT, db_host
from mailcluster.upgrade_plan import Plan

REPO = Path(__file__).resolve().parent.parent
LAB_INVENTORY = "inventory/lab.py"


# How long an old node may still be needed after its users' move: a login that reached
# it (directly, or proxied by a node whose passdb was not yet rewritten) just before the
# move's "moving" lines landed waits there until their delay_until (passdb.MOVE_HOLD_S
# from when the file was rendered, at most the end of the move's deploy), and is then
# proxied on to the user's new node. Removed before that, the node takes such a login
# with it: the client waits out its timeout. The likely cause, not a proven one, of the
# lab upgrade runs' rare 20-s IMAP timeouts (2026-12-01/02: each a user of the batch's
# old node, logging in just as the move began; the old node's logs went with it).
# Plus 5 s for the proxying on.
HELD_LOGINS_S = passdb.MOVE_HOLD_S + 5


class UpgradeError(Exception):
    pass


def os_release_of(target: str) -> str:
    """What ``. /etc/os-release; echo $ID $VERSION_ID`` prints on a platform's host."""
    p = platforms.get(target)
    return f"{p.distro.lower()} {p.version}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] upgrade: {message}", file=sys.stderr, flush=True)


class Runner:
    """What the upgrade does to the world; tests may stand in for parts of it."""

    def __init__(self, inventory: str) -> None:
        self.inventory = inventory
        self.lab = Path(inventory).name == Path(LAB_INVENTORY).name

    def site(self) -> tuple[site_mod.Site, dict[str, dict]]:
        from mailcluster.mailctl import load_inventory

        return load_inventory(self.inventory)

    def run(self, cmd: list[str], what: str, timeout: int = 3600) -> str:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            lines = (proc.stdout + proc.stderr).strip().splitlines()
            # pyinfra's errors ("[host] Error: ...", and the output just before) come long
            # before its results table: both, so the message says what failed where.
            errors = [
                "\n".join(lines[max(0, i - 3) : i + 1])
                for i, line in enumerate(lines)
                if re.search(r"\]\s+Error|Error:", line)
            ]
            tail = "\n".join([*errors[:5], "...", *lines[-12:]])
            raise UpgradeError(f"{what} failed:\n{tail}")
        return proc.stdout

    def deploy(self, what: str, limit: str | None = None, deploy_file: str = "deploy.py") -> None:
        """Run ``deploy_file`` on every host, or on ``limit`` (names, comma-separated)."""
        started = time.monotonic()
        cmd = [sys.executable, "-m", "pyinfra", "-y", self.inventory, deploy_file]
        for name in (limit or "").split(","):
            if name:
                cmd += ["--limit", name]
        self.run(cmd, f"the deploy ({what})")
        log(f"deployed ({what}) in {time.monotonic() - started:.0f} s")

    def lab_cli(self, *args: str) -> None:
        self.run([sys.executable, "-m", "mailcluster.lab", *args], f"lab {' '.join(args)}")

    def os_release(self, site: site_mod.Site, connect: dict[str, dict], node: str) -> str:
        cmd = status_mod.ssh_command(connect.get(node, {}), str(site.host(node).address))
        out = self.run(
            [*cmd, ". /etc/os-release; echo $ID $VERSION_ID"], f"reading {node}'s OS", 60
        )
        return out.strip()

    def ssh(
        self, site: site_mod.Site, connect: dict[str, dict], node: str, script: str
    ) -> list[str]:
        """The command that runs ``script`` as root on ``node`` (sudo if the inventory
        logs in as another user)."""
        c = connect.get(node, {})
        cmd = status_mod.ssh_command(c, str(site.host(node).address))
        if c.get("ssh_user") not in (None, "root"):
            return [*cmd, f"sudo -n sh -c {shlex.quote(script)}"]
        return [*cmd, script]

    def webmail_php(
        self, site: site_mod.Site, connect: dict[str, dict], nodes: list[str], action: str
    ) -> None:
        """Start or stop php-fpm (RoundCube) on the webmail hosts ``nodes``."""
        units = "$(systemctl list-unit-files --no-legend 'php*-fpm.service' | awk '{print $1}')"
        script = f"systemctl {action} {units}"
        if action == "start":  # 219/CGROUP right after a stop, now and then: once more
            script = f"{{ {script}; }} || {{ sleep 2 && {script}; }}"
        for node in nodes:
            self.run(self.ssh(site, connect, node, script), f"php-fpm {action} on {node}", 120)

    def copy_database(
        self, site: site_mod.Site, connect: dict[str, dict], old: str, new: str
    ) -> None:
        """RoundCube's database from ``old`` to ``new``: pg_dump there, streamed here, and
        the RUNBOOK's restore on ``new`` (restored into a new database first; it takes
        the live name only when that worked)."""
        dump_cmd = self.ssh(
            site, connect, old, f"cd / && runuser -u postgres -- pg_dump -Fc {DB_NAME}"
        )
        load_script = (
            "set -e; umask 077; f=$(mktemp /var/tmp/roundcube-upgrade.XXXXXX); "
            'trap \'rm -f "$f"\' EXIT; cat > "$f"; '
            f'[ -s "$f" ] || {{ echo "empty dump" >&2; exit 1; }}; {RESTORE_SCRIPT} "$f"'
        )
        load_cmd = self.ssh(site, connect, new, load_script)
        with subprocess.Popen(dump_cmd, cwd=REPO, stdout=subprocess.PIPE) as dump:
            load = subprocess.run(
                load_cmd, cwd=REPO, stdin=dump.stdout, capture_output=True, text=True
            )
            assert dump.stdout is not None
            dump.stdout.close()
            dumped = dump.wait(timeout=3600)
        if dumped != 0 or load.returncode != 0:
            raise UpgradeError(
                f"copying RoundCube's database from {old} to {new} failed (pg_dump exit "
                f"{dumped}, restore exit {load.returncode}): {load.stderr.strip()[-2000:]}"
            )
        log(f"{new}: {load.stdout.strip()}")

    def wait_for_held_logins(self, moved_at: float | None) -> None:
        """Until no login can still be held on a batch's old nodes (see HELD_LOGINS_S),
        counted from ``moved_at`` (time.monotonic() when the move's deploy ended; None:
        not known, after a resume: the whole time)."""
        left = HELD_LOGINS_S - (time.monotonic() - moved_at if moved_at is not None else 0)
        if left > 0:
            log(f"waiting {left:.0f} s for logins still held on the old nodes")
            time.sleep(left)

    def health(self, site: site_mod.Site, connect: dict[str, dict]) -> tuple[int, str]:
        hosts = status_mod.collect(site, connect)
        findings = status_mod.judge(hosts, site.monitoring)
        return status_mod.overall(findings), status_mod.report(hosts, findings, 0.0)


def _mail_backends(site: site_mod.Site) -> list[str]:
    """Mail nodes that hold mail as far as the site and failover say (the plan aside)."""
    failed = set(site.failed_nodes())
    return [h.name for h in site.in_group("mail") if not h.draining and h.name not in failed]


def start(site: site_mod.Site, pairs: list[tuple[str, str]], target: str, batch: int) -> Plan:
    """A new plan, checked and saved; or the one under way if it is the same."""
    if target not in platforms.PLATFORMS:
        raise UpgradeError(f"--to {target}: one of {', '.join(platforms.PLATFORMS)}")
    current = upgrade_plan.load(site.secrets_dir)
    if current is not None:
        if pairs and (current.pairs != pairs or current.target != target):
            raise UpgradeError(
                "an upgrade is under way ("
                + ", ".join(f"{o}={n}" for o, n in current.pairs)
                + f" to {current.target}); run `mailctl upgrade` with no node to resume it"
            )
        return copy.deepcopy(current)
    if not pairs:
        raise UpgradeError("no upgrade under way; name the nodes: OLD=NEW ...")
    mail = {h.name for h in site.in_group("mail")}
    web_db = {h.name for h in site.in_group("webmail") + site.in_group("db")}
    others = [o for o, _ in pairs if o in web_db - mail]
    plan = Plan(target=target, pairs=pairs, batch_size=batch, others=others)
    upgrade_plan.validate(plan, sorted(mail))
    for _, new in pairs:
        if any(h.name == new for h in site.hosts) and new in site.backend_nodes():
            raise UpgradeError(f"{new}: already holds mail; a new node must be new")
    upgrade_plan.save(site.secrets_dir, plan)
    log("plan: " + ", ".join(f"{o} -> {n}" for o, n in pairs) + f" on {target}")
    return plan


def _save(site: site_mod.Site, plan: Plan) -> None:
    upgrade_plan.save(site.secrets_dir, plan)


def _check_new(r: Runner, plan: Plan, old: str, new: str) -> None:
    """``new`` is in the site (the lab: added now, with ``old``'s groups) and runs the
    plan's platform."""
    site, connect = r.site()
    if r.lab and not any(h.name == new for h in site.hosts):
        r.lab_cli(
            "add", new, "--groups", ",".join(site.host(old).groups), "--platform", plan.target
        )
        site, connect = r.site()
    if not any(h.name == new for h in site.hosts):
        groups = ", ".join(site.host(old).groups)
        raise UpgradeError(
            f"{new}: not in the site file; install it with {plan.target}, add it "
            f"(groups: {groups}), and run `mailctl upgrade` again"
        )
    have, want = r.os_release(site, connect, new), os_release_of(plan.target)
    if have != want:
        raise UpgradeError(f"{new} runs {have!r}, not {plan.target} ({want})")


def run_host_move(r: Runner, plan: Plan, old: str, new: str) -> None:
    """A webmail or database host replaced (the module's docstring)."""
    started = time.monotonic()
    site, connect = r.site()
    if plan.step(old) == "pending":
        level, report = r.health(site, connect)
        if level >= status_mod.CRITICAL:
            raise UpgradeError(
                f"the cluster is not healthy; not starting {old} -> {new}:\n{report}"
            )
        _check_new(r, plan, old, new)
        r.deploy(f"{new} set up beside {old}")
        plan.steps[old] = "joined"
        _save(site, plan)
    if plan.step(old) == "joined":
        site, connect = r.site()
        if db_host(site) == old or plan.db_to == new:
            webs = [h.name for h in site.in_group("webmail")]
            down = time.monotonic()
            if plan.db_to != new:
                log(
                    f"webmail maintenance: php-fpm stopped on {', '.join(webs)} while "
                    f"RoundCube's database moves from {old} to {new}"
                )
                r.webmail_php(site, connect, webs, "stop")
                try:
                    r.copy_database(site, connect, old, new)
                except BaseException:
                    r.webmail_php(site, connect, webs, "start")  # nothing changed: serve on
                    raise
                plan.db_to = new
                _save(site, plan)
            # From here the old copy is stale: php-fpm stays stopped until the webmail
            # hosts use the new one (a failed deploy leaves it so; running the command
            # again deploys, without a second copy).
            r.deploy(
                f"the webmail uses the database on {new}",
                limit=",".join(dict.fromkeys([*webs, new])),
            )
            r.webmail_php(site, connect, webs, "start")
            log(f"webmail maintenance over: {time.monotonic() - down:.0f} s")
        plan.steps[old] = "moved"
        _save(site, plan)
    if plan.step(old) in ("moved", "drained"):
        site, connect = r.site()
        if any(h.name == old for h in site.hosts):
            if not r.lab:
                raise UpgradeError(
                    f"{new}: serving. Put it in DNS / the load balancer in {old}'s place, "
                    f"then power {old} off, delete it from the site file, and run "
                    "`mailctl upgrade` again"
                )
            r.lab_cli("remove", old)
        r.deploy(f"the others forget {old}")
        site, connect = r.site()
        level, report = r.health(site, connect)
        if level >= status_mod.CRITICAL:
            raise UpgradeError(
                f"after {old} -> {new} the cluster is not healthy; stopped:\n{report}"
            )
        plan.steps[old] = "removed"
        _save(site, plan)
    log(f"{old} -> {new} done in {time.monotonic() - started:.0f} s")


def run_batch(r: Runner, plan: Plan, batch: list[tuple[str, str]]) -> None:
    if len(batch) == 1 and batch[0][0] in plan.others:
        run_host_move(r, plan, *batch[0])
        return
    names = ", ".join(f"{o} -> {n}" for o, n in batch)
    olds = [o for o, _ in batch]
    news = [n for _, n in batch]
    started = time.monotonic()
    site, connect = r.site()

    def step_of_batch() -> str:
        return min((plan.step(o) for o in olds), key=upgrade_plan.STEPS.index)

    if step_of_batch() == "pending":
        level, report = r.health(site, connect)
        if level >= status_mod.CRITICAL:
            raise UpgradeError(f"the cluster is not healthy; not starting {names}:\n{report}")
        for old, new in batch:
            _check_new(r, plan, old, new)
        site, connect = r.site()
        r.deploy(f"{', '.join(news)} set up, holding no mailbox yet")
        users = accounts.read_passwords(site.secrets_dir)
        previous = {u: site.backend_of(u) for u in users}
        plan.pins = plan.pins_for_batch(previous, batch, _mail_backends(site))
        moving = sum(1 for u in users if plan.pins[u] != previous[u])
        for old in olds:
            plan.steps[old] = "joined"
        _save(site, plan)
        log(f"{names}: {moving} users move to the new nodes")
    moved_at: float | None = None  # when this run moved the users (a resume: unknown)
    if step_of_batch() == "joined":
        site, connect = r.site()
        undrained = [o for o in olds if not site.host(o).draining]
        if undrained and r.lab:
            for old in undrained:  # the lab has no DNS: clients follow the site file
                r.lab_cli("drain", old)
        elif undrained:
            raise UpgradeError(
                f"{', '.join(news)}: deployed; put them in DNS / the load balancer. Then "
                f"take {', '.join(undrained)} out of it, wait for the TTL, mark "
                f"{'them' if len(undrained) > 1 else 'it'} draining in the site file "
                "(docs/RUNBOOK.md section 6), and run `mailctl upgrade` again"
            )
        r.deploy(f"users of {', '.join(olds)} moved")
        moved_at = time.monotonic()
        for old in olds:
            plan.steps[old] = "moved"
        _save(site, plan)
    if step_of_batch() == "moved":
        for old in olds:
            r.deploy(
                f"{old}'s queue delivered", limit=old, deploy_file="mailcluster/deploys/drain.py"
            )
        # Only then may the old nodes go (removed below, or powered off by the operator).
        r.wait_for_held_logins(moved_at)
        for old in olds:
            plan.steps[old] = "drained"
        _save(site, plan)
    if step_of_batch() == "drained":
        site, connect = r.site()
        left = [o for o in olds if any(h.name == o for h in site.hosts)]
        if left and r.lab:
            for old in left:
                r.lab_cli("remove", old)
        elif left:
            raise UpgradeError(
                f"{', '.join(left)}: drained; power them off, delete them from the site file, "
                "and run `mailctl upgrade` again"
            )
        r.deploy(f"the others forget {', '.join(olds)}")
        site, connect = r.site()
        level, report = r.health(site, connect)
        if level >= status_mod.CRITICAL:
            raise UpgradeError(f"after {names} the cluster is not healthy; stopped:\n{report}")
        for old in olds:
            plan.steps[old] = "removed"
        _save(site, plan)
    log(f"batch {names} done in {time.monotonic() - started:.0f} s")


def upgrade(
    inventory: str,
    pairs: list[tuple[str, str]],
    target: str,
    batch: int = 1,
    runner: Callable[[str], Runner] = Runner,
) -> Plan:
    r = runner(inventory)
    site, _ = r.site()
    plan = start(site, pairs, target, batch)
    while (current := plan.current_batch()) is not None:
        run_batch(r, plan, current)
    site, _ = r.site()
    if plan.pins:
        plan.pins = {}
        _save(site, plan)
    r.deploy("the pins dropped: every user on their node by the plain hash")
    upgrade_plan.remove(site.secrets_dir)
    log("every batch done; the plan is removed")
    return plan


def parse_pairs(values: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for v in values:
        old, sep, new = v.partition("=")
        if not sep or not old or not new:
            raise UpgradeError(f"{v!r}: write OLD=NEW (the node and its replacement)")
        pairs.append((old, new))
    return pairs
