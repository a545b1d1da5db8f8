"""How fast the lab's mail nodes accept mail over SMTP and deliver it into the Maildirs.

Sends, from the lab host, against the mail nodes of a running lab (``lab info``):

* ``--messages`` small messages (about 300 bytes each) over port 25, without
  authentication (each node accepts mail for its local users there), with the null sender
  ``<>`` (nothing can bounce) and a unique header ``Message-ID: <bench-RUNID-i@DOMAIN>``.
  Message ``i`` goes to mail node ``i mod N`` and to bench user ``(i div N) mod 250``, so
  every user gets mail through every node, and on a two-node lab half of the messages
  reach a node that is not the recipient's backend: that node hands them on to the
  backend over SMTP with verified TLS, and the backend writes ``~/Maildir/new/``.
* ``--threads`` SMTP connections at a time (8). Each connection carries up to
  ``--per-connection`` messages (10) to one node and then ``QUIT``s. Beyond Exim's
  ``smtp_accept_queue_per_connection`` (100, mailcluster/sizing.py) messages are only
  queued and wait for the next queue run, so a larger value measures that, not delivery.
* Polling: ssh to one mail node (homes are shared between the nodes) reads the headers of
  the bench users' ``Maildir/new`` and ``Maildir/cur`` files and counts this run's
  Message-IDs, until every accepted message is there (then once more after ``--settle``
  seconds, for late duplicates) or the deadline passes.

Reports: sent (``MAIL FROM`` issued), accepted (250 after the data), delivered (distinct
Message-IDs found), duplicates (the same Message-ID in more than one file), lost (accepted
but not delivered by the deadline), the time to accept all of them and the time until the
last one was delivered (the newest file's mtime: the lab shares one clock), accepted/s and
accepted-and-delivered/s, the accept-to-delivery latency (p50/p95/max), and per node: the
Exim log lines of the run (received, handed on, delivered, deferred, failed), other
problem lines logged meanwhile, the paniclog, and a queue snapshot (``exim4 -bpc``).

The script stops by itself: sending and polling share ``--deadline`` (300 s), every SMTP
and ssh step has a timeout. It connects only to the lab's mail node addresses (inside the
lab's subnet). At the end it deletes the run's delivered messages (only files whose
Message-ID has this run's id) and, unless ``--keep-queued``, removes the run's messages
that are still in a node's queue (``exim4 -Mrm``), so that nothing arrives later.

Run (lab up and deployed; from the repository root; nothing else using the lab)::

    .venv/bin/python bench/smtp_throughput.py --messages 100
    .venv/bin/python bench/smtp_throughput.py --messages 1000 --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import datetime
import email.utils
import ipaddress
import json
import queue
import re
import secrets
import shlex
import smtplib
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labinfo import backend_of as labinfo_backend_of
from labinfo import lab_info, machine, mail_nodes

from mailcluster.lab.config import SUBNET
from tests import hosts

REPO = Path(__file__).resolve().parent.parent
PORT = 25
SMTP_TIMEOUT_S = 30.0  # one SMTP step (connect, one reply)
SSH_TIMEOUT_S = 60.0
EXIM_QUEUE_PER_CONNECTION = 100  # smtp_accept_queue_per_connection (mailcluster/sizing.py)
DEFAULT_PER_CONNECTION = 10

# Runs on a mail node (python3 is part of the lab image).
# argv: mode run_id domain offset [exim ids...]
#   scan:    this run's messages in the bench users' Maildirs: [number, mtime, user]
#   delete:  removes those files
#   state:   Exim's version, mainlog size (and its text from offset), paniclog, queue size,
#            this run's messages still in the queue
#   unqueue: exim4 -Mrm the given ids
REMOTE = r"""
import glob, json, os, re, subprocess, sys

mode, run_id, domain, offset = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tag = ("bench-" + run_id + "-").encode()
pat = re.compile(rb"^Message-ID:[ \t]*<" + re.escape(tag) + rb"(\d+)@"
                 + re.escape(domain.encode()) + rb">", re.I | re.M)

def run_files():
    for sub in ("new", "cur"):
        for path in glob.glob(f"/home/bench*/Maildir/{sub}/*"):
            try:
                with open(path, "rb") as f:
                    head = f.read(65536).split(b"\n\n", 1)[0]
                mtime = os.stat(path).st_mtime
            except OSError:
                continue  # moved or removed meanwhile
            m = pat.search(head)
            if m:
                yield path, int(m.group(1)), mtime

def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return r.returncode, (r.stdout + r.stderr).strip()

if mode == "scan":
    print(json.dumps({"found": [[n, t, p.split("/")[2]] for p, n, t in run_files()]}))
elif mode == "delete":
    deleted, errors = 0, []
    for p, _, _ in run_files():
        try:
            os.unlink(p)
            deleted += 1
        except OSError as e:
            errors.append(str(e))
    print(json.dumps({"deleted": deleted, "errors": errors[:10]}))
elif mode == "state":
    log = "/var/log/exim4/mainlog"
    size = os.path.getsize(log) if os.path.exists(log) else 0
    text = ""
    if offset >= 0:
        with open(log, "rb") as f:
            f.seek(offset if offset <= size else 0)  # rotated meanwhile: from the start
            text = f.read(32 << 20).decode(errors="replace")
    panic = None
    if os.path.exists("/var/log/exim4/paniclog"):
        with open("/var/log/exim4/paniclog", "rb") as f:
            panic = f.read()[-4000:].decode(errors="replace")
    rc, out = run(["exim4", "-bpc"])
    queued = []
    for h in glob.glob("/var/spool/exim4/input/**/*-H", recursive=True):
        try:
            with open(h, "rb") as f:
                if tag in f.read():
                    queued.append(os.path.basename(h)[:-2])
        except OSError:
            pass  # delivered meanwhile
    version = run(["exim4", "--version"])[1].splitlines()[0]
    print(json.dumps({"log_size": size, "log": text, "panic": panic,
                      "queue": int(out) if rc == 0 and out.isdigit() else out,
                      "run_queued": queued, "version": version}))
elif mode == "unqueue":
    ids = sys.argv[5:]
    rc, out = run(["exim4", "-Mrm", *ids]) if ids else (0, "")
    print(json.dumps({"rc": rc, "out": out[-2000:]}))
"""


# -- lab -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lab:
    ssh_config: str
    domain: str
    nodes: dict[str, str]  # mail node name -> address, in the order of `lab info`
    users: list[str]
    backend_of: Callable[[str], str]  # the deploy's map (bench/labinfo.backend_of)


def read_lab() -> Lab:
    info = lab_info()
    nodes = mail_nodes(info)
    for name, address in nodes.items():  # traffic goes to the lab only
        if ipaddress.ip_address(address) not in SUBNET:
            raise SystemExit(f"{name} ({address}) is not in the lab's subnet {SUBNET}")
    users = list(info["bench_accounts"]["users"])
    if not users:
        raise SystemExit("lab info lists no bench user")
    return Lab(info["ssh_config"], info["domain"], nodes, users, labinfo_backend_of(info))


def remote(lab: Lab, node: str, mode: str, run_id: str, offset: int = -1, *ids: str) -> Any:
    """Runs REMOTE on a node; returns its JSON, or {"error": ...}."""
    command = "python3 - " + shlex.join([mode, run_id, lab.domain, str(offset), *ids])
    try:
        r = hosts.run(
            lab.ssh_config, node, command, check=False, input=REMOTE, timeout=SSH_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return {"error": f"ssh {mode} timed out"}
    if r.returncode != 0:
        return {"error": r.stderr.strip()[-300:]}
    return json.loads(r.stdout)


def remote_all(lab: Lab, mode: str, run_id: str, offsets: dict[str, int]) -> dict[str, Any]:
    with_threads: dict[str, Any] = {}

    def one(n: str) -> None:
        with_threads[n] = remote(lab, n, mode, run_id, offsets.get(n, -1))

    threads = [threading.Thread(target=one, args=(n,)) for n in lab.nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {n: with_threads.get(n, {"error": "no answer"}) for n in lab.nodes}


# -- plan and send -------------------------------------------------------------------------


@dataclass
class Message:
    index: int
    node: str
    user: str
    direct: bool  # the node is the user's backend (else it hands the message on)
    outcome: str = "not sent"  # "accepted", or the reply / exception
    sent: bool = False  # MAIL FROM was issued
    accepted_at: float | None = None  # wall clock of the 250


def plan(lab: Lab, count: int) -> list[Message]:
    names = list(lab.nodes)
    msgs = []
    for i in range(count):
        node = names[i % len(names)]
        user = lab.users[(i // len(names)) % len(lab.users)]
        msgs.append(Message(i, node, user, lab.backend_of(user) == node))
    return msgs


def batches(msgs: list[Message], per_connection: int) -> list[list[Message]]:
    """Per node, consecutive messages in groups of per_connection; nodes interleaved."""
    per_node: dict[str, list[list[Message]]] = {}
    for m in msgs:
        groups = per_node.setdefault(m.node, [])
        if not groups or len(groups[-1]) >= per_connection:
            groups.append([])
        groups[-1].append(m)
    out: list[list[Message]] = []
    for k in range(max(len(g) for g in per_node.values())):
        out += [g[k] for g in per_node.values() if k < len(g)]
    return out


def render(m: Message, run_id: str, domain: str) -> bytes:
    lines = [
        f"From: SMTP throughput benchmark <bench-smtp@{domain}>",
        f"To: <{m.user}@{domain}>",
        f"Subject: smtp_throughput {run_id} {m.index}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        f"Message-ID: <bench-{run_id}-{m.index}@{domain}>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"Message {m.index} of the SMTP throughput benchmark run {run_id},",
        f"sent to mail node {m.node} for {m.user}.",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def reply_key(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return f"{code} {text.splitlines()[0] if text else ''}".strip()


def exc_key(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return reply_key(exc.smtp_code, exc.smtp_error)
    return f"{type(exc).__name__}: {exc}"[:160]


def send_batch(batch: list[Message], lab: Lab, run_id: str, deadline: float) -> None:
    address = lab.nodes[batch[0].node]
    smtp: smtplib.SMTP | None = None
    try:
        smtp = smtplib.SMTP(address, PORT, timeout=SMTP_TIMEOUT_S)
        code, text = smtp.ehlo()
        if code != 250:
            raise smtplib.SMTPResponseException(code, text)
        for k, m in enumerate(batch):
            if time.monotonic() > deadline:
                for rest in batch[k:]:
                    rest.outcome = "not sent: deadline"
                break
            try:
                m.sent = True
                code, text = smtp.mail("")
                if code == 250:
                    code, text = smtp.rcpt(f"{m.user}@{lab.domain}")
                if code in (250, 251):
                    code, text = smtp.data(render(m, run_id, lab.domain))
                if code == 250:
                    m.outcome, m.accepted_at = "accepted", time.time()
                else:
                    m.outcome = reply_key(code, text)
                    smtp.rset()
            except (OSError, smtplib.SMTPException) as exc:
                m.outcome = exc_key(exc)
                for rest in batch[k + 1 :]:
                    rest.outcome = f"not sent: connection lost ({m.outcome})"
                raise
        smtp.quit()
        smtp = None
    except (OSError, smtplib.SMTPException) as exc:
        for m in batch:
            if m.outcome == "not sent":
                m.outcome = f"not sent: {exc_key(exc)}"
    finally:
        if smtp is not None:
            smtp.close()


def send_all(
    msgs: list[Message], lab: Lab, run_id: str, threads: int, per_connection: int, deadline: float
) -> None:
    work: queue.Queue[list[Message]] = queue.Queue()
    for b in batches(msgs, per_connection):
        work.put(b)

    def worker() -> None:
        while time.monotonic() < deadline:
            try:
                batch = work.get_nowait()
            except queue.Empty:
                return
            send_batch(batch, lab, run_id, deadline)

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:  # a thread blocked in a step ends by SMTP_TIMEOUT_S at the latest
        t.join(max(0.0, deadline - time.monotonic()) + SMTP_TIMEOUT_S + 5)
    for m in msgs:
        if m.outcome == "not sent":
            m.outcome = "not sent: deadline"


# -- results -------------------------------------------------------------------------------


@dataclass
class Results:
    start_wall: float = 0.0
    accept_seconds: float | None = None  # first connection -> last 250
    delivered: dict[int, float] = field(default_factory=dict)  # index -> earliest mtime
    copies: Counter[int] = field(default_factory=Counter)  # index -> files found
    delivered_observed_s: float | None = None  # when a poll first saw them all
    polls: int = 0
    poll_errors: Counter[str] = field(default_factory=Counter)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    deleted: dict[str, Any] = field(default_factory=dict)
    unqueued: dict[str, Any] = field(default_factory=dict)


def scan(lab: Lab, node: str, run_id: str, res: Results) -> bool:
    found = remote(lab, node, "scan", run_id)
    res.polls += 1
    if "error" in found:
        res.poll_errors[found["error"]] += 1
        return False
    res.copies = Counter()
    res.delivered = {}
    for index, mtime, _user in found["found"]:
        res.copies[index] += 1
        res.delivered[index] = min(mtime, res.delivered.get(index, mtime))
    return True


def poll(
    lab: Lab, run_id: str, msgs: list[Message], res: Results, args: argparse.Namespace
) -> None:
    node = args.poll_node or next(iter(lab.nodes))
    accepted = {m.index for m in msgs if m.outcome == "accepted"}
    deadline = res.start_wall + args.deadline  # wall clock: compared with time.time()
    while True:
        ok = scan(lab, node, run_id, res)
        if ok and accepted <= res.delivered.keys():
            res.delivered_observed_s = time.time() - res.start_wall
            time.sleep(args.settle)  # late duplicates
            scan(lab, node, run_id, res)
            return
        if time.time() + args.poll > deadline:
            return
        time.sleep(args.poll)


LOG_RE = re.compile(
    r"^\S+ \S+ (?:\[\d+\] )?(?P<id>[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}) "
    r"(?P<rest>.*)$"
)
PROBLEM_RE = re.compile(
    r"error|refused|reject|defer|panic|lost|time(d)? ?out|fail|too many|no immediate|frozen"
    r"|SIGHUP|daemon started|re-exec",  # a reload or restart of Exim during the run
    re.I,
)


def normalise(line: str) -> str:
    """A log line without its time, Exim ids and numbers: lines of one kind group."""
    line = re.sub(r"^\S+ \S+ (\[\d+\] )?", "", line)
    line = re.sub(r"(AUTH [A-Za-z0-9_-]+) [^\"\s]+", r"\1 (credentials removed)", line, flags=re.I)
    line = re.sub(r"[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}", "ID", line)
    line = re.sub(r"bench\d{3}", "benchNNN", line)
    line = re.sub(r"bench-[0-9a-z]+-\d+", "bench-RUN-N", line)
    line = re.sub(r"\d+", "N", line)
    return line[:200]


@dataclass
class NodeLog:
    received_client: int = 0  # <= from the lab host
    received_node: int = 0  # <= handed on by another node
    handed_on: int = 0  # => R=to_backend
    stored: int = 0  # => into a Maildir (R=local_user / procmail)
    stored_users: list[str] = field(default_factory=list)
    deferred: Counter[str] = field(default_factory=Counter)  # ==
    failed: Counter[str] = field(default_factory=Counter)  # **
    other_run: Counter[str] = field(default_factory=Counter)  # the run's unusual lines
    other_problems: Counter[str] = field(default_factory=Counter)  # not the run's
    lines: int = 0


def parse_log(text: str, run_id: str, client_ip: str) -> NodeLog:
    out = NodeLog()
    ours: set[str] = set()
    tag = f" id=bench-{run_id}-"
    parsed = [(line, LOG_RE.match(line)) for line in text.splitlines() if line.strip()]
    for line, m in parsed:
        if m and m.group("rest").startswith("<= ") and tag in line:
            ours.add(m.group("id"))
    for line, m in parsed:
        out.lines += 1
        if not m or m.group("id") not in ours:
            if PROBLEM_RE.search(line):
                out.other_problems[normalise(line)] += 1
            continue
        rest = m.group("rest")
        if rest.startswith("<= "):
            if f"[{client_ip}]" in rest:
                out.received_client += 1
            else:
                out.received_node += 1
        elif rest.startswith("=> "):
            if "R=to_backend" in rest:
                out.handed_on += 1
            else:
                out.stored += 1
                out.stored_users.append(rest.split()[1])
        elif rest.startswith("== "):
            out.deferred[normalise(line)] += 1
        elif rest.startswith("** "):
            out.failed[normalise(line)] += 1
        elif rest != "Completed":
            out.other_run[normalise(line)] += 1
    return out


def client_address(lab: Lab) -> str:
    """The lab host's address towards the mail nodes (as Exim logs it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((next(iter(lab.nodes.values())), PORT))  # UDP: sends nothing
        return str(s.getsockname()[0])


# -- report --------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def report(
    lab: Lab, run_id: str, msgs: list[Message], res: Results, args: argparse.Namespace
) -> str:
    names = list(lab.nodes)
    client_ip = client_address(lab)
    logs = {
        n: parse_log(res.after[n].get("log", ""), run_id, client_ip)
        for n in names
        if "error" not in res.after.get(n, {"error": ""})
    }
    sent = [m for m in msgs if m.sent]
    accepted = [m for m in msgs if m.outcome == "accepted"]
    acc_ids = {m.index for m in accepted}
    delivered_ok = acc_ids & res.delivered.keys()
    unexpected = res.delivered.keys() - acc_ids  # delivered without a 250 seen
    dups = sum(c - 1 for c in res.copies.values() if c > 1)
    dup_msgs = sum(1 for c in res.copies.values() if c > 1)
    lost = len(acc_ids - res.delivered.keys())
    latencies: dict[str, list[float]] = {"all": [], "direct": [], "handed on": []}
    for m in accepted:
        if m.index in res.delivered and m.accepted_at is not None:
            seconds = res.delivered[m.index] - m.accepted_at
            latencies["all"].append(seconds)
            latencies["direct" if m.direct else "handed on"].append(seconds)
    last_delivery_s = (
        max(res.delivered[i] for i in delivered_ok) - res.start_wall if delivered_ok else None
    )
    all_delivered = bool(acc_ids) and not lost

    def row(label: str, cells: list[str]) -> str:
        return "| " + " | ".join([label, *cells]) + " |"

    def per_node(f: Any, total: bool = True) -> list[str]:
        cells = [f(n) for n in names]
        if total:
            try:
                cells.append(str(sum(int(c) for c in cells)))
            except ValueError:
                cells.append("")
        else:
            cells.append("")
        return cells

    def lg(n: str, attr: str) -> str:
        if n not in logs:
            return "n/a"
        v = getattr(logs[n], attr)
        return str(sum(v.values()) if isinstance(v, Counter) else v)

    def stored_elsewhere(n: str) -> str:
        if n not in logs:
            return "n/a"
        users = [u for u in logs[n].stored_users if lab.backend_of(u) != n]
        return str(len(users))

    def queue_of(n: str) -> str:
        return str(res.after.get(n, {}).get("queue", "n/a"))

    def run_queued(n: str) -> str:
        return str(len(res.after.get(n, {}).get("run_queued", [])))

    lines = [
        row("", [*names, "total"]),
        "|" + "---|" * (len(names) + 2),
        row(
            "Messages sent to the node (`MAIL FROM` issued)",
            per_node(lambda n: str(sum(m.node == n for m in sent))),
        ),
        row("**Accepted (250)**", per_node(lambda n: str(sum(m.node == n for m in accepted)))),
        row(
            "... of which for a user whose backend is the node (direct)",
            per_node(lambda n: str(sum(m.node == n and m.direct for m in accepted))),
        ),
        row(
            "... of which for a user on the other node (handed on)",
            per_node(lambda n: str(sum(m.node == n and not m.direct for m in accepted))),
        ),
        row(
            "Exim log: received from the lab host (`<=`)",
            per_node(lambda n: lg(n, "received_client")),
        ),
        row(
            "Exim log: received from the other node (`<=`)",
            per_node(lambda n: lg(n, "received_node")),
        ),
        row(
            "Exim log: handed on to the backend (`=>` R=to_backend)",
            per_node(lambda n: lg(n, "handed_on")),
        ),
        row(
            "Exim log: written into a Maildir (`=>` R=local_user)",
            per_node(lambda n: lg(n, "stored")),
        ),
        row(
            "... for a user whose backend is not this node (should be 0)",
            per_node(stored_elsewhere),
        ),
        row(
            "Exim log: deferred (`==`) / failed (`**`)",
            per_node(lambda n: f"{lg(n, 'deferred')} / {lg(n, 'failed')}", total=False),
        ),
        row("Queue after the run (`exim4 -bpc`)", per_node(queue_of)),
        row("... of which this run's messages", per_node(run_queued)),
    ]
    accept_s = res.accept_seconds
    lines += [
        "",
        "| Result | Value |",
        "|---|---|",
        f"| Sent | {len(sent)} of {len(msgs)} |",
        f"| **Accepted (250)** | **{len(accepted)}** |",
        f"| **Delivered** (distinct Message-IDs in the Maildirs) | **{len(res.delivered)}** |",
        f"| Duplicates (extra copies of a Message-ID) | {dups} ({dup_msgs} messages) |",
        f"| Lost (accepted, not delivered by the deadline) | {lost} |",
        f"| Delivered without a 250 seen by the client | {len(unexpected)} |",
        "| Time to accept them (first connection → last 250) | "
        + (f"{accept_s:.2f} s |" if accept_s is not None else "n/a |"),
        "| Time until all delivered (first connection → newest file's mtime) | "
        + (
            f"{last_delivery_s:.2f} s |"
            if all_delivered and last_delivery_s is not None
            else f"not all by the deadline ({args.deadline:.0f} s) |"
        ),
        "| ... seen by polling (every "
        f"{args.poll:g} s, {res.polls} polls) | "
        + (
            f"{res.delivered_observed_s:.2f} s |"
            if res.delivered_observed_s is not None
            else "n/a |"
        ),
        "| **Accepted/s** | " + (f"**{len(accepted) / accept_s:.1f}** |" if accept_s else "n/a |"),
        "| **Accepted and delivered/s** | "
        + (f"**{len(delivered_ok) / last_delivery_s:.1f}** |" if last_delivery_s else "n/a |"),
    ]
    for kind, values in latencies.items():
        if values:
            lines.append(
                f"| Accept → delivered ({kind}, {len(values)}), p50 / p95 / max (ms) | "
                f"{pct(values, 50) * 1000:.0f} / {pct(values, 95) * 1000:.0f} / "
                f"{max(values) * 1000:.0f} |"
            )
    lines.append("")

    failures = Counter(m.outcome for m in msgs if m.outcome != "accepted")
    if failures:
        lines += ["SMTP failures (by the server's reply or the exception):", ""]
        lines += [f"- {times} x {key}" for key, times in failures.most_common()]
    else:
        lines.append("SMTP failures: none.")
    notes: list[str] = []
    for n in names:
        after = res.after.get(n, {})
        if "error" in after:
            notes.append(f"- {n}: state over ssh failed: {after['error']}")
            continue
        log = logs[n]
        for title, counter in (
            ("deferred", log.deferred),
            ("failed", log.failed),
            ("other lines of the run", log.other_run),
            ("problem, reload or restart lines not from this run", log.other_problems),
        ):
            for key, times in counter.most_common(5):
                notes.append(f"- {n}, {title}: {times} x `{key}`")
        panic_before = res.before.get(n, {}).get("panic")
        if after.get("panic") is not None and after.get("panic") != panic_before:
            notes.append(f"- {n}: paniclog changed: `{after['panic'][-300:].strip()}`")
        elif after.get("panic") is not None:
            notes.append(f"- {n}: a paniclog exists (unchanged during the run)")
    lines.append("")
    if notes:
        lines += ["Exim logs during the run:", "", *notes]
    else:
        lines.append("Exim logs during the run: no deferral, failure or problem line; no paniclog.")
    lines.append("")
    clean = []
    for n, d in res.deleted.items():
        if "deleted" in d:
            clean.append(f"{d['deleted']} delivered files of the run deleted (from {n})")
        else:
            clean.append(f"deleting over ssh ({n}) failed: {d.get('error')}")
    for n, u in res.unqueued.items():
        clean.append(f"{n}: {u}")
    lines.append("Cleanup: " + "; ".join(clean) + ".")
    for key, times in res.poll_errors.items():
        lines.append(f"Poll errors: {times} x {key}")
    return "\n".join(lines) + "\n"


# -- main ----------------------------------------------------------------------------------


def run(lab: Lab, run_id: str, args: argparse.Namespace) -> tuple[list[Message], Results]:
    res = Results()
    msgs = plan(lab, args.messages)
    res.before = remote_all(lab, "state", run_id, {})
    offsets = {n: s["log_size"] for n, s in res.before.items() if "log_size" in s}
    for n, s in res.before.items():
        if "error" in s:
            raise SystemExit(f"{n}: {s['error']}")
    poll_node = args.poll_node or next(iter(lab.nodes))
    try:
        print(
            f"run {run_id}: sending {len(msgs)} messages over {args.threads} connections "
            f"at a time, {args.per_connection} per connection ...",
            file=sys.stderr,
        )
        res.start_wall = time.time()
        t0 = time.monotonic()
        send_all(msgs, lab, run_id, args.threads, args.per_connection, t0 + args.deadline)
        accepted_at = [m.accepted_at for m in msgs if m.accepted_at is not None]
        if accepted_at:
            res.accept_seconds = max(accepted_at) - res.start_wall
        print(
            f"{len(accepted_at)} accepted after {time.monotonic() - t0:.1f} s; polling ...",
            file=sys.stderr,
        )
        poll(lab, run_id, msgs, res, args)
        print(f"{len(res.delivered)} delivered; reading the nodes' logs ...", file=sys.stderr)
        res.after = remote_all(lab, "state", run_id, offsets)
    finally:
        # Cleanup: the run's messages still queued (they would arrive after the cleanup),
        # then the run's delivered files.
        if not res.after:
            res.after = remote_all(lab, "state", run_id, offsets)
        if not args.keep_queued:
            for n in lab.nodes:
                ids = res.after.get(n, {}).get("run_queued") or []
                if ids:
                    r = remote(lab, n, "unqueue", run_id, -1, *ids)
                    res.unqueued[n] = f"exim4 -Mrm of {len(ids)} queued: rc {r.get('rc')}"
        res.deleted[poll_node] = remote(lab, poll_node, "delete", run_id)
    return msgs, res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=1000, help="messages to send (1000)")
    p.add_argument("--threads", type=int, default=8, help="SMTP connections at a time (8)")
    p.add_argument(
        "--per-connection",
        type=int,
        default=DEFAULT_PER_CONNECTION,
        help=f"messages per connection ({DEFAULT_PER_CONNECTION}; over "
        f"{EXIM_QUEUE_PER_CONNECTION} are only queued)",
    )
    p.add_argument("--deadline", type=float, default=300, help="for sending + delivery, s (300)")
    p.add_argument("--poll", type=float, default=0.5, help="poll interval, s (0.5)")
    p.add_argument("--settle", type=float, default=2, help="wait for duplicates, s (2)")
    p.add_argument("--poll-node", help="mail node to poll the Maildirs on (the first)")
    p.add_argument(
        "--keep-queued", action="store_true", help="leave the run's queued messages queued"
    )
    p.add_argument("--write", type=Path, help="append the results to this Markdown file")
    argv_used = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv_used)
    if args.messages < 1 or args.threads < 1 or args.per_connection < 1:
        p.error("--messages, --threads and --per-connection must be at least 1")

    lab = read_lab()
    if args.poll_node and args.poll_node not in lab.nodes:
        p.error(f"--poll-node: not a mail node ({', '.join(lab.nodes)})")
    if args.per_connection > EXIM_QUEUE_PER_CONNECTION:
        print(
            f"note: Exim only queues the messages after the {EXIM_QUEUE_PER_CONNECTION}th on "
            "one connection; they wait for the next queue run",
            file=sys.stderr,
        )
    run_id = f"{time.strftime('%Y%m%d%H%M%S', time.gmtime())}{secrets.token_hex(3)}"
    started = datetime.datetime.now(datetime.timezone.utc)
    msgs, res = run(lab, run_id, args)
    text = report(lab, run_id, msgs, res, args)
    print(text)
    if args.write:
        versions = sorted({s.get("version", "?") for s in res.before.values()})
        with args.write.open("a") as f:
            f.write(
                f"\n## {started:%Y-%m-%d %H:%M} UTC: SMTP throughput, {args.messages} "
                f"messages (`bench/smtp_throughput.py`)\n\n"
                f"Run on the lab host: {machine()}. Mail nodes: "
                + ", ".join(f"{n} ({a})" for n, a in lab.nodes.items())
                + f", {', '.join(versions)}. Run id `{run_id}`. Command: "
                f"`.venv/bin/python bench/smtp_throughput.py {shlex.join(argv_used)}` "
                f"({args.threads} connections at a time, {args.per_connection} messages per "
                f"connection, {args.deadline:g} s deadline)."
                f"\n\n{text}"
            )
    accepted = sum(m.outcome == "accepted" for m in msgs)
    good = accepted == len(msgs) and set(res.delivered) == {m.index for m in msgs}
    return 0 if good and not any(c > 1 for c in res.copies.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
