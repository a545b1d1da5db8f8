"""Nothing lost: 1,000 uniquely identified messages into the lab while it is disturbed.

From the lab host, against a running, deployed lab (``python -m mailcluster.lab info``):

* A sender submits ``--messages`` messages over port 25 (as other mail servers do: no
  authentication, null sender ``<>``), each with its own ``Message-ID:
  <lost-RUNID-i@DOMAIN>``, message ``i`` first to mail node ``i mod N``, at ``--rate``
  messages a second from ``--threads`` connections. Like any MTA it retries a message
  the lab did not accept (a refused connection, a 4xx) on the next node, up to
  ``--attempts`` times. Recipients: the benchmark users, and every ``--quota-every``-th
  message the test user ``heidi``, whose home is over quota until the end.
* Meanwhile, in order: (a) a rolling deploy (``python -m mailcluster.rollout``) changes
  Dovecot's and Exim's configuration on every mail node (a comment line more in both
  templates, so both are validated and reloaded); (b) Exim and Dovecot of the last mail
  node are stopped for ``--outage`` seconds (60) and started again; (a') a second rolling
  deploy changes the configuration back.
* Then (c) heidi's quota is raised, every node's queue is run (``exim4 -qff``), and the
  Maildirs are polled (from the lab host: the homes are the lab's shared volume) until
  every accepted message is there or ``--deadline`` passes.

Reports sent / accepted / delivered / duplicated / lost (accepted but not in its
recipient's Maildir) / refused (never accepted after every attempt: the sender keeps it,
nothing was promised), and exits 1 on any loss or duplicate. It removes the run's
messages from the Maildirs afterwards.

    .venv/bin/python bench/nothing_lost.py                 # 1000 messages, ~4 minutes
    .venv/bin/python bench/nothing_lost.py --messages 200 --outage 20
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import labinfo
from labinfo import HOMES, REPO, lab_info

from tests import hosts

SSH_TIMEOUT_S = 300  # a command on a node (its exit status is not checked)
OVER_QUOTA_USER = "heidi"
MARK = "# changed by bench/nothing_lost.py"


def log(text: str) -> None:
    print(f"[{time.strftime('%T')}] {text}", flush=True)


def lab_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mailcluster.lab", *args], cwd=REPO, check=True)


@dataclass
class Message:
    i: int
    msg_id: str
    user: str
    first_node: int
    accepted_on: str | None = None
    attempts: list[str] = field(default_factory=list)


def sender(
    lab: dict[str, Any],
    todo: queue.Queue[Message | None],
    nodes: list[dict[str, Any]],
    attempts: int,
) -> None:
    while (m := todo.get()) is not None:
        for k in range(attempts):
            node = nodes[(m.first_node + k) % len(nodes)]
            msg = EmailMessage()
            msg["From"] = f"load@{lab['domain']}"
            msg["To"] = f"{m.user}@{lab['domain']}"
            msg["Subject"] = f"nothing lost {m.i}"
            msg["Message-ID"] = m.msg_id
            msg.set_content(f"message {m.i} of a nothing-lost run\n")
            try:
                with smtplib.SMTP(node["address"], 25, timeout=30) as smtp:
                    smtp.ehlo("load.example.org")
                    smtp.send_message(msg, from_addr="", to_addrs=[msg["To"]])
                m.accepted_on = node["name"]
                break
            except (smtplib.SMTPException, OSError) as exc:
                m.attempts.append(f"{node['name']}: {exc!r}"[:200])
                time.sleep(1)


def changed_templates(folder: Path) -> Path:
    for template in ("dovecot/dovecot.conf.j2", "exim4/exim4.conf.j2"):
        text = (REPO / "templates" / template).read_text()
        (folder / template).parent.mkdir(parents=True, exist_ok=True)
        (folder / template).write_text(text + f"\n{MARK}\n")
    return folder


def rollout(env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mailcluster.rollout", "-i", "inventory/lab.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    tail = [line for line in proc.stdout.splitlines() if line.startswith("rollout:")]
    log("  " + " / ".join(tail[-2:]))
    if proc.returncode != 0:
        raise SystemExit(f"rollout failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")


def disturb(lab: dict[str, Any], outage_s: int, tmp: Path, events: list[str]) -> None:
    mail = [h["name"] for h in lab["hosts"] if "mail" in h["groups"]]
    time.sleep(3)
    log("(a) rolling deploy: Dovecot and Exim config changed on every mail node")
    rollout({"MAILCLUSTER_TEMPLATE_PATH": str(changed_templates(tmp))})
    events.append("rollout changed every node")
    victim, ssh_config = mail[-1], lab["ssh_config"]
    log(f"(b) {victim}: Exim and Dovecot stopped for {outage_s} s")
    hosts.run(
        ssh_config, victim, "systemctl stop exim4 dovecot", check=False, timeout=SSH_TIMEOUT_S
    )
    time.sleep(outage_s)
    hosts.run(
        ssh_config, victim, "systemctl start exim4 dovecot", check=False, timeout=SSH_TIMEOUT_S
    )
    events.append(f"{victim} down {outage_s} s")
    log(f"(b) {victim}: started again")
    log("(a') rolling deploy back to the repository's configuration")
    rollout()
    events.append("rollout changed every node back")


def maildir_counts(users: set[str], run_id: str) -> Counter[str]:
    """Message-ID -> number of files holding it, over the users' Maildirs."""
    return labinfo.maildir_counts(users, f"<lost-{run_id}-")


def remove_run(users: set[str], run_id: str) -> None:
    needle = f"<lost-{run_id}-".encode()
    for user in users:
        for sub in ("new", "cur"):
            folder = HOMES / user / "Maildir" / sub
            if folder.is_dir():
                for path in folder.iterdir():
                    if needle in path.read_bytes()[:4096]:
                        path.unlink()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=6.0, help="messages a second (6)")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--attempts", type=int, default=10)
    ap.add_argument("--outage", type=int, default=60, help="seconds a node is down (60)")
    ap.add_argument("--quota-every", type=int, default=25)
    ap.add_argument("--deadline", type=int, default=420, help="seconds to wait for delivery")
    ap.add_argument("--json", type=Path, help="write the report here too")
    args = ap.parse_args(argv)

    lab = lab_info()
    nodes = [h for h in lab["hosts"] if "mail" in h["groups"]]
    bench_users = lab["bench_accounts"]["users"]
    run_id = secrets.token_hex(4)
    messages = []
    for i in range(args.messages):
        over = args.quota_every and i % args.quota_every == 0
        user = OVER_QUOTA_USER if over else bench_users[i % len(bench_users)]
        msg_id = f"<lost-{run_id}-{i}@{lab['domain']}>"
        messages.append(Message(i, msg_id, user, i % len(nodes)))
    users = {m.user for m in messages}
    log(f"run {run_id}: {len(messages)} messages to {len(users)} users via {len(nodes)} nodes")

    lab_cli("quota", OVER_QUOTA_USER, "4K")  # below what the home holds: over quota
    events: list[str] = []
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trouble = threading.Thread(
                target=disturb, args=(lab, args.outage, Path(tmp), events), daemon=True
            )
            trouble.start()
            todo: queue.Queue[Message | None] = queue.Queue()
            workers = [
                threading.Thread(target=sender, args=(lab, todo, nodes, args.attempts))
                for _ in range(args.threads)
            ]
            for w in workers:
                w.start()
            for m in messages:  # paced: the load spans the disturbances
                todo.put(m)
                time.sleep(1 / args.rate)
            for _ in workers:
                todo.put(None)
            for w in workers:
                w.join()
            sent_s = time.monotonic() - started
            log(f"all {len(messages)} submitted in {sent_s:.0f} s; waiting for the disturbances")
            trouble.join()
    finally:
        log(f"(c) {OVER_QUOTA_USER}'s quota raised; queues run on every node")
        lab_cli("quota", OVER_QUOTA_USER, "none")
    accepted = [m for m in messages if m.accepted_on]
    wanted = {m.msg_id for m in accepted}
    deadline = time.monotonic() + args.deadline
    counts: Counter[str] = Counter()
    while True:
        for n in nodes:
            hosts.run(
                lab["ssh_config"], n["name"], "exim4 -qff", check=False, timeout=SSH_TIMEOUT_S
            )
        counts = maildir_counts(users, run_id)
        missing = wanted - set(counts)
        if not missing or time.monotonic() > deadline:
            break
        log(f"  {len(wanted) - len(missing)}/{len(wanted)} delivered; waiting")
        time.sleep(10)
    time.sleep(5)  # late duplicates
    counts = maildir_counts(users, run_id)
    report = {
        "sent": len(messages),
        "accepted": len(accepted),
        "delivered": sum(1 for m in accepted if counts[m.msg_id] >= 1),
        "duplicated": sum(1 for c in counts.values() if c > 1),
        "lost": sum(1 for m in accepted if counts[m.msg_id] == 0),
        "refused": len(messages) - len(accepted),
        "retried": sum(1 for m in messages if m.attempts),
        "over_quota_messages": sum(1 for m in messages if m.user == OVER_QUOTA_USER),
        "events": events,
        "seconds": round(time.monotonic() - started),
    }
    lost = [m.msg_id for m in accepted if counts[m.msg_id] == 0]
    if lost:
        report["lost_ids"] = lost[:20]
    report["retry_examples"] = [a for m in messages for a in m.attempts][:5]
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    remove_run(users, run_id)
    bad = report["lost"] or report["duplicated"] or report["refused"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
