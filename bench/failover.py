"""Failover: a mail node loses its power while clients log in and mail arrives; then
`mailctl failover`, the node's return (fenced), its drain and its rejoin.

From the lab host, against a running, deployed lab with three mail nodes or more
(``--add mail03``: `lab add` one, deploy, and remove it at the end). The victim is the
last mail node. Each run:

1. ``--queued`` messages go into the victim's own queue (``exim -odq``), for users whose
   mailbox it holds: they must wait on its disk and be delivered after it returns.
2. Load, through the other (surviving) nodes only: a sender submits a message every
   ``--interval`` s on port 25, in turn to a user the victim holds ("moved") and one it
   does not, each with ``Message-ID: <failover-RUN-i@DOMAIN>``, retrying on the next node
   as an MTA would; on every surviving node, IMAPS logins every 100 ms of a moved and of
   an unmoved user; and an unmoved user's IMAP session held open on each surviving node.
3. `lab stop` the victim (SIGKILL to all its processes: a power cut); ``--outage`` s
   later, `mailctl failover VICTIM`. **Failover time**: from the command's start to the
   first successful IMAPS login of a moved user through any surviving node.
4. The load goes on ``--after`` s and stops. Unmoved users: no failed login, the held
   sessions still answer, and no surviving node's Exim deferred a message to them. Every
   accepted message is in its recipient's Maildir within ``--settle`` s, before the
   victim returns (mail for its users went to their new backends, not waiting for it),
   except one that a survivor had handed to the victim (its 250) before the cut: that
   one is in the victim's own queue and must be found there on its return.
5. `lab start` the victim: it must come up fenced (IMAPS and SMTP closed, its queue
   still on its disk: its ``--queued`` messages plus any handed over, nothing else).
   The deploy brings it in line; a moved user logs in on it directly (it proxies now);
   `mailctl drain VICTIM` delivers its queue; `mailctl rejoin VICTIM` and a deploy
   make it a backend again (its users move back).
6. Every accepted message, and every message of the victim's queue, must be in its
   recipient's Maildir exactly once (read from the lab host: the homes are the lab's
   shared volume).

Prints a table row per run and exits 1 on a loss, a duplicate or a failed check.

    .venv/bin/python bench/failover.py --add mail03 --runs 5 --json report.json
"""

from __future__ import annotations

import argparse
import imaplib
import json
import secrets
import smtplib
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import labinfo
from labinfo import REPO, backend_of, lab_info, machine

from tests import hosts

TIMEOUT_S = 10


def log(text: str) -> None:
    print(f"[{time.strftime('%T')}] {text}", flush=True)


def run(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc


def lab_cli(*args: str) -> None:
    run(sys.executable, "-m", "mailcluster.lab", *args)


def mailctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(
        sys.executable, "-m", "mailcluster.mailctl", "-i", "inventory/lab.py", *args, check=check
    )


def deploy() -> None:
    run(str(REPO / ".venv/bin/pyinfra"), "-y", "inventory/lab.py", "deploy.py")


def password(lab: dict[str, Any], user: str) -> str:
    for a in lab["accounts"]:
        if a["user"] == user:
            return str(a["password"])
    return str(lab["bench_accounts"]["password"])


def imap_login(lab: dict[str, Any], address: str, user: str) -> imaplib.IMAP4_SSL:
    context = ssl.create_default_context(cafile=lab["ca_cert"])
    client = imaplib.IMAP4_SSL(address, 993, ssl_context=context, timeout=TIMEOUT_S)
    try:
        client.login(user, password(lab, user))
    except BaseException:
        client.shutdown()
        raise
    return client


@dataclass
class Load:
    lab: dict[str, Any]
    survivors: list[dict[str, Any]]
    moved: list[str]
    unmoved: list[str]
    run_id: str
    interval: float
    stop: threading.Event = field(default_factory=threading.Event)
    failover_started: float | None = None
    first_moved_login: float | None = None
    accepted: dict[str, str] = field(default_factory=dict)  # Message-ID -> user
    refused: int = 0
    sent: int = 0
    unmoved_failures: list[str] = field(default_factory=list)
    moved_failures: int = 0
    logins: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self) -> None:
        i = 0
        while not self.stop.is_set():
            pool = self.moved if i % 2 == 0 else self.unmoved
            user = pool[(i // 2) % len(pool)]
            msg_id = f"<failover-{self.run_id}-{i}@{self.lab['domain']}>"
            msg = EmailMessage()
            msg["From"] = f"load@{self.lab['domain']}"
            msg["To"] = f"{user}@{self.lab['domain']}"
            msg["Subject"] = f"failover {i}"
            msg["Message-ID"] = msg_id
            msg.set_content(f"message {i} of a failover run\n")
            self.sent += 1
            for k in range(len(self.survivors) * 3):
                node = self.survivors[(i + k) % len(self.survivors)]
                try:
                    with smtplib.SMTP(node["address"], 25, timeout=30) as smtp:
                        smtp.ehlo("load.example.org")
                        smtp.send_message(msg, from_addr="", to_addrs=[msg["To"]])
                    self.accepted[msg_id] = user
                    break
                except (smtplib.SMTPException, OSError):
                    time.sleep(1)
            else:
                self.refused += 1
            i += 1
            time.sleep(self.interval)

    def probe(self, node: dict[str, Any], user: str, moved: bool, offset: float) -> None:
        time.sleep(offset)
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                imap_login(self.lab, node["address"], user).logout()
                ok = True
            except (imaplib.IMAP4.error, OSError) as exc:
                ok = False
                if not moved:
                    self.unmoved_failures.append(
                        f"{time.strftime('%T')} {node['name']} {user}: {exc!r}"
                    )
            with self.lock:
                self.logins += 1
                if moved and not ok:
                    self.moved_failures += 1
                if (
                    moved
                    and ok
                    and self.failover_started is not None
                    and began >= self.failover_started
                    and self.first_moved_login is None
                ):
                    self.first_moved_login = time.monotonic()
            time.sleep(0.1)

    def threads(self) -> list[threading.Thread]:
        out = [threading.Thread(target=self.send, daemon=True)]
        for n in self.survivors:
            # Three staggered probers of moved users per node: an attempt that started on
            # the old map (and waits for the dead backend) does not hide the new map.
            for k in range(3):
                args = (n, self.moved[k % len(self.moved)], True, k * 0.2)
                out.append(threading.Thread(target=self.probe, args=args, daemon=True))
            out.append(
                threading.Thread(
                    target=self.probe, args=(n, self.unmoved[0], False, 0.0), daemon=True
                )
            )
        return out


def maildir_counts(users: set[str], run_id: str) -> Counter[str]:
    return labinfo.maildir_counts(users, f"<failover-{run_id}-")


def closed(address: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((address, port), timeout=3):
            return False
    except OSError:
        return True


def one_run(lab: dict[str, Any], victim: str, args: argparse.Namespace) -> dict[str, Any]:
    ssh = lab["ssh_config"]
    of = backend_of(lab)
    nodes = [h for h in lab["hosts"] if "mail" in h["groups"]]
    survivors = [h for h in nodes if h["name"] != victim]
    victim_address = next(h["address"] for h in nodes if h["name"] == victim)
    users = [a["user"] for a in lab["accounts"]] + list(lab["bench_accounts"]["users"])
    moved = [u for u in users if of(u) == victim]
    unmoved = [u for u in users if of(u) != victim]
    if not moved or not unmoved:
        raise SystemExit(f"{victim} holds {len(moved)} of {len(users)} users: nothing to test")
    # Probers log in as test users where the victim holds one (their passwords are their
    # own), else as benchmark users; held sessions: an unmoved test user.
    run_id = secrets.token_hex(4)
    checks: list[str] = []

    # 1. The victim's own queue: held there by the power cut.
    queued_ids = [f"<failover-{run_id}-q{k}@{lab['domain']}>" for k in range(args.queued)]
    queued_users = {}
    for k, msg_id in enumerate(queued_ids):
        user = moved[k % len(moved)]
        queued_users[msg_id] = user
        text = (
            f"From: load@{lab['domain']}\nTo: {user}@{lab['domain']}\n"
            f"Subject: failover queued {k}\nMessage-ID: {msg_id}\n\nqueued on {victim}\n"
        )
        hosts.run(ssh, victim, f"exim4 -odq -oi -f '' {user}@{lab['domain']}", input=text)

    load = Load(lab, survivors, moved, unmoved, run_id, args.interval)
    held = [imap_login(lab, n["address"], unmoved[0]) for n in survivors]
    threads = load.threads()
    for t in threads:
        t.start()
    time.sleep(3)

    # 3. The power cut, the outage, the failover.
    log(f"run {run_id}: {victim} loses its power ({len(moved)} users on it)")
    lab_cli("stop", victim)
    time.sleep(args.outage)
    load.failover_started = time.monotonic()
    out = mailctl("failover", victim)
    command_s = time.monotonic() - load.failover_started
    deadline = time.monotonic() + 120
    while load.first_moved_login is None and time.monotonic() < deadline:
        time.sleep(0.1)
    failover_s = load.first_moved_login - load.failover_started if load.first_moved_login else None
    shown = "never" if failover_s is None else f"{failover_s:.1f} s"
    log(f"  failover: command {command_s:.1f} s, first moved login after {shown}")
    log(f"  mailctl: {out.stdout.strip().splitlines()[0]}")
    time.sleep(args.after)
    load.stop.set()
    for t in threads:
        t.join(timeout=60)
    sessions_alive = 0
    for c in held:
        try:
            sessions_alive += c.noop()[0] == "OK"
            c.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
    if sessions_alive != len(held):
        checks.append(f"held sessions of an unmoved user: {sessions_alive}/{len(held)} alive")
    if load.unmoved_failures:
        checks.append(f"unmoved users' failed logins: {load.unmoved_failures[:5]}")

    # No mail of an unmoved user was held back: Exim deferred none of the run's messages
    # to them on any surviving node (its log: "<=" names the Message-ID, "==" a deferral).
    deferred: Counter[str] = Counter()
    for n in survivors:
        script = (
            f"log=/var/log/exim4/mainlog; for i in $(grep -F 'id=failover-{run_id}-' $log "
            "| awk '{print $3}' | sort -u); do grep -F \" $i == \" $log; done "
            "| awk '{print $5}'"
        )
        for rcpt in hosts.run(ssh, n["name"], script, check=False).stdout.split():
            deferred[rcpt.split("@")[0]] += 1
    unmoved_deferred = sum(c for u, c in deferred.items() if u in set(unmoved))
    if unmoved_deferred:
        checks.append(f"deliveries to unmoved users deferred: {unmoved_deferred}")

    # Mail for the moved users went to their new backends, not waiting for the victim:
    # everything accepted is in a Maildir before the victim boots again.
    accepted_users = set(load.accepted.values())
    settle = time.monotonic() + args.settle
    while True:
        before_return = maildir_counts(accepted_users, run_id)
        if set(load.accepted) <= set(before_return) or time.monotonic() > settle:
            break
        time.sleep(2)
    waiting = {m for m in load.accepted if m not in before_return}

    # 5. The return: fenced, brought in line, drained, rejoined.
    lab_cli("start", victim)
    fence = hosts.run(ssh, victim, "mailcluster-fence status", check=False).stdout.strip()
    on_disk = hosts.run(ssh, victim, "exim4 -bpc", check=False).stdout.strip()
    if fence != "fenced" or not (closed(victim_address, 993) and closed(victim_address, 25)):
        checks.append(f"{victim} came back unfenced ({fence}; 993/25 open)")
    # The run's messages in the victim's spool (the Message-ID in each -H file). Besides
    # its own --queued ones, a survivor may have handed it a load message (the victim's
    # 250) just before the cut: that message is in the victim's own queue, like the
    # queued ones, and is delivered when it returns. Any other message still waiting
    # (on a survivor, or nowhere) is a failed check.
    spooled = set(
        hosts.run(
            ssh,
            victim,
            f"grep -rhoa '<failover-{run_id}-[^>]*>' /var/spool/exim4/input | sort -u",
            check=False,
        ).stdout.split()
    )
    handed = waiting & spooled
    if waiting - handed:
        checks.append(
            f"{len(waiting - handed)} accepted messages not delivered before {victim} "
            "returned, and not in its queue"
        )
    if spooled != set(queued_ids) | handed or on_disk != str(args.queued + len(handed)):
        checks.append(
            f"{victim}'s queue after the power cut: {on_disk} messages "
            f"({len(spooled & set(queued_ids))} of its {args.queued} queued, "
            f"{len(handed)} handed over by survivors, "
            f"{len(spooled - set(queued_ids) - handed)} others), "
            f"not {args.queued} + {len(handed)}"
        )
    # Nothing of the moved users was written on its return before the deploy.
    deploy()
    try:
        imap_login(lab, victim_address, moved[0]).logout()
    except (imaplib.IMAP4.error, OSError) as exc:
        checks.append(f"a moved user's direct login on {victim} after the deploy: {exc!r}")
    mailctl("drain", victim)
    mailctl("rejoin", victim)
    deploy()

    # 6. Every message exactly once.
    wanted = dict(load.accepted) | queued_users
    users_hit = set(wanted.values())
    deadline = time.monotonic() + args.deadline
    while True:
        counts = maildir_counts(users_hit, run_id)
        if set(wanted) <= set(counts) or time.monotonic() > deadline:
            break
        for n in nodes:
            hosts.run(ssh, n["name"], "exim4 -qff", check=False, timeout=300)
        time.sleep(5)
    time.sleep(3)
    counts = maildir_counts(users_hit, run_id)
    report = {
        "run": run_id,
        "victim": victim,
        "moved_users": len(moved),
        "failover_s": None if failover_s is None else round(failover_s, 1),
        "command_s": round(command_s, 1),
        "outage_s": args.outage,
        "sent": load.sent,
        "accepted": len(load.accepted),
        "refused": load.refused,
        "queued_on_victim": args.queued,
        "delivered": sum(1 for m in wanted if counts[m] >= 1),
        "delivered_before_return": len(load.accepted) - len(waiting),
        "handed_to_victim": len(handed),
        "lost": sum(1 for m in wanted if counts[m] == 0),
        "duplicated": sum(1 for m in wanted if counts[m] > 1),
        "logins": load.logins,
        "moved_failed_logins": load.moved_failures,
        "unmoved_failed_logins": len(load.unmoved_failures),
        "moved_deferred": sum(c for u, c in deferred.items() if u in set(moved)),
        "unmoved_deferred": unmoved_deferred,
        "checks_failed": checks,
    }
    return report


def markdown(summary: dict[str, Any], started: str, args: argparse.Namespace) -> str:
    runs = summary["runs"]
    ft = summary["failover_s"]
    rows = "".join(
        f"| {i + 1} | {r['victim']} ({r['moved_users']} users) | {r['failover_s']} s | "
        f"{r['command_s']} s | {r['accepted']} + {r['queued_on_victim']} | "
        f"{r['delivered_before_return']} + {r['delivered'] - r['delivered_before_return']} | "
        f"{r['lost']} | {r['duplicated']} | {r['unmoved_failed_logins']} | "
        f"{r['unmoved_deferred']} | {'; '.join(r['checks_failed']) or 'all passed'} |\n"
        for i, r in enumerate(runs)
    )
    return (
        f"\n## {started}: failover, {len(runs)} runs (`bench/failover.py`)\n\n"
        f"Lab on {summary['platform']} (mail nodes), on {summary['machine']}. Command: "
        f"`bench/failover.py --add mail03 --runs {len(runs)} --write BENCHMARKS.md` (power cut "
        f"by `lab stop`, {args.outage} s before `mailctl failover`; load through the "
        f"surviving nodes: a message every {args.interval} s on port 25, IMAPS logins "
        f"every 100 ms). **Failover time** (the command's start to a moved user's first "
        f"successful login through any surviving node): min {ft['min']} s, median "
        f"{ft['median']} s, max {ft['max']} s.\n\n"
        "| run | victim (its users) | failover time | command | messages (accepted + "
        "in its queue) | delivered (before + after its return) | lost | duplicated | "
        "unmoved users' failed logins | "
        "unmoved users' deferrals | checks (fence, queue kept, direct login after deploy, "
        "held sessions) |\n|---|---|---|---|---|---|---|---|---|---|---|\n" + rows
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--add", help="add this mail node first (lab add, deploy); removed after")
    ap.add_argument("--interval", type=float, default=0.2, help="s between messages (0.2)")
    ap.add_argument("--queued", type=int, default=5, help="messages in the victim's queue")
    ap.add_argument("--outage", type=int, default=5, help="s between power cut and failover")
    ap.add_argument("--after", type=int, default=10, help="s of load after the failover")
    ap.add_argument("--deadline", type=int, default=180, help="s to wait for delivery")
    ap.add_argument(
        "--settle", type=int, default=60, help="s for the accepted mail to land before the return"
    )
    ap.add_argument("--json", type=Path, help="write the report here too")
    ap.add_argument("--write", type=Path, help="append a Markdown table to this file")
    args = ap.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())

    if args.add:
        log(f"adding {args.add} (lab add, deploy)")
        lab_cli("add", args.add, "--groups", "mail")
        deploy()
    reports = []
    try:
        lab = lab_info()
        victim = [h["name"] for h in lab["hosts"] if "mail" in h["groups"]][-1]
        for _ in range(args.runs):
            reports.append(one_run(lab, victim, args))
            print(json.dumps(reports[-1]), flush=True)
    finally:
        if args.add:
            log(f"removing {args.add}")
            mailctl("rejoin", args.add, check=False)
            run(sys.executable, "-m", "mailcluster.lab", "drain", args.add, check=False)
            deploy()
            mailctl("drain", args.add, check=False)
            lab_cli("remove", args.add, "--force")
            deploy()
    times = [r["failover_s"] for r in reports if r["failover_s"] is not None]
    summary = {
        "machine": machine(),
        "platform": lab_info()["platform"],
        "runs": reports,
        "failover_s": {
            "min": min(times, default=None),
            "median": statistics.median(times) if times else None,
            "max": max(times, default=None),
        },
    }
    log(f"failover time over {len(times)} runs: {summary['failover_s']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.write:
        with args.write.open("a") as fh:
            fh.write(markdown(summary, started, args))
    bad = [
        r
        for r in reports
        if r["lost"] or r["duplicated"] or r["checks_failed"] or r["failover_s"] is None
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
