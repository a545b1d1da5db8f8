"""How many idle IMAP sessions the lab's mail nodes hold, what each costs, and login latency.

Measures, from the lab host, against the mail nodes of a running lab (``lab info``):

* concurrent sessions: opens ``--sessions`` IMAPS connections (port 993, implicit TLS,
  verified against the lab CA by IP), spread evenly over the mail nodes and the bench
  users (never more than 20 per user, Dovecot's ``mail_max_userip_connections``), each
  doing the TLS handshake and ``LOGIN`` and then holding the connection idle. A user who
  connects to a node that is not its backend is proxied there by Dovecot (over TLS);
* while they are held, per node over ssh: the number of ``imap`` processes, their average
  private memory (Private_Clean + Private_Dirty from ``/proc/PID/smaps_rollup``), the
  ``imap-login`` processes' private memory (proxied sessions live there), the growth of
  the nodes' memory cgroup (anonymous + kernel memory: page tables, sockets...; counted
  once when nodes share a cgroup, as the lab's containers do), and
  ``service/imap/process_limit``;
* login latency (TLS connect + LOGIN + LOGOUT, sequential, before the load): a user on its
  backend (direct) vs on another mail node (proxied), p50 and p95.

Failures are grouped by the server's reply or the exception. Every connection is closed at
the end; the opening phase stops at ``--deadline`` and every other step has a timeout, so
the script always ends by itself. Traffic goes only to the lab's mail node addresses.

Run (lab up and deployed; from the repository root)::

    .venv/bin/python bench/imap_sessions.py --sessions 4000
    .venv/bin/python bench/imap_sessions.py --sessions 4000 --write BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import resource
import shlex
import ssl
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labinfo import backend_of as labinfo_backend_of
from labinfo import lab_info, machine, mail_nodes

from tests import hosts

REPO = Path(__file__).resolve().parent.parent
PORT = 993
MAX_PER_USER = 20  # mail_max_userip_connections (protocol imap) in the Dovecot template
STEP_TIMEOUT_S = 30.0  # one network step (connect + handshake, one reply)
SSH_TIMEOUT_S = 120.0
CLOSE_TIMEOUT_S = 5.0
CLOSE_PHASE_S = 120.0

# Runs on a mail node (python3 is part of the lab image): process counts and memory.
REMOTE = r"""
import json, os, re, subprocess

def private_kb(pid):
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total

procs = {"imap": [0, 0], "imap-login": [0, 0]}
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
        if comm in procs:
            kb = private_kb(pid)
            procs[comm][0] += 1
            procs[comm][1] += kb
    except OSError:
        pass  # the process ended meanwhile

def process_limit():
    r = subprocess.run(["doveconf", "-h", "service/imap/process_limit"],
                       capture_output=True, text=True)
    if r.returncode == 0 and r.stdout.strip().isdigit():
        return int(r.stdout.strip())
    conf = subprocess.run(["doveconf", "-n"], capture_output=True, text=True).stdout
    m = re.search(r"^service imap \{\n(.*?)^\}", conf, re.M | re.S)
    if m:
        m2 = re.search(r"^\s*process_limit\s*=\s*(\d+)", m.group(1), re.M)
        if m2:
            return int(m2.group(1))
    return None

def cgroup_kb():
    # the memory cgroup (v1) this node sees, its identity (inode: containers may share
    # one), anonymous and kernel memory in KiB
    try:
        stat = {}
        with open("/sys/fs/cgroup/memory/memory.stat") as f:
            for line in f:
                k, v = line.split()
                stat[k] = int(v)
        with open("/sys/fs/cgroup/memory/memory.kmem.usage_in_bytes") as f:
            kmem = int(f.read())
        ino = os.stat("/sys/fs/cgroup/memory").st_ino
        return [stat["rss"] // 1024, kmem // 1024, ino]
    except (OSError, KeyError, ValueError):
        return None

print(json.dumps({
    "imap": procs["imap"][0], "imap_private_kb": procs["imap"][1],
    "login": procs["imap-login"][0], "login_private_kb": procs["imap-login"][1],
    "process_limit": process_limit(), "cgroup_kb": cgroup_kb(),
}))
"""


# -- lab -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lab:
    ca_cert: str
    ssh_config: str
    nodes: dict[str, str]  # mail node name -> address, in the order of `lab info`
    users: list[str]
    password: str
    backend_of: Callable[[str], str]  # the deploy's map (bench/labinfo.backend_of)


def backend(lab: Lab, user: str) -> str:
    return lab.backend_of(user)


def read_lab() -> Lab:
    info = lab_info()
    nodes = mail_nodes(info)
    bench = info["bench_accounts"]
    return Lab(
        info["ca_cert"],
        info["ssh_config"],
        nodes,
        list(bench["users"]),
        bench["password"],
        labinfo_backend_of(info),
    )


def tls_context(ca_cert: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_cert)  # verifies the certificate's IP SAN
    return ctx


def quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    node: str
    address: str
    user: str
    direct: bool  # the node is the user's backend (else Dovecot proxies the session)
    source: str | None = None  # the lab host's address to connect from (None: default)


def plan(
    lab: Lab,
    sessions: int,
    per_user_max: int,
    direct_only: bool = False,
    sources: list[str] | None = None,
) -> list[Slot]:
    """Sessions split evenly over the nodes; users split over the nodes (each user's sessions
    on one node only, since a proxied session also counts against the user on its backend);
    within a node, round robin over its users. ``direct_only``: each node gets only users
    whose backend it is (no proxying: every session is an ``imap`` process there).
    ``sources``: the lab host's addresses to spread a user's sessions over (Dovecot's
    per-user limit counts per client address)."""
    names = list(lab.nodes)
    srcs: list[str | None] = list(sources) if sources else [None]
    if direct_only:
        users_of = {n: [u for u in lab.users if backend(lab, u) == n] for n in names}
    else:
        users_of = {n: lab.users[i :: len(names)] for i, n in enumerate(names)}
    cap = per_user_max * len(srcs)
    slots: list[Slot] = []
    for i, node in enumerate(names):
        count = sessions // len(names) + (1 if i < sessions % len(names) else 0)
        users = users_of[node]
        if count and (not users or math.ceil(count / len(users)) > cap):
            raise SystemExit(
                f"{count} sessions on {node} need more than {cap} per user "
                f"({len(users)} users, {len(srcs)} client addresses)"
            )
        for k in range(count):
            user = users[k % len(users)]
            src = srcs[(k // len(users)) % len(srcs)]
            slots.append(Slot(node, lab.nodes[node], user, backend(lab, user) == node, src))
    return slots


# -- one session ---------------------------------------------------------------------------


class Refused(Exception):
    """The server answered, but not with OK: the reply is the failure key."""


async def read_tagged(reader: asyncio.StreamReader, tag: bytes, timeout: float) -> str:
    """Lines until the tagged reply; Refused unless it is OK."""
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            raise Refused("connection closed by server")
        if line.startswith(tag + b" "):
            text = line[len(tag) + 1 :].decode(errors="replace").strip()
            if not text.startswith("OK"):
                raise Refused(text)
            return text
        if line.startswith(b"* BYE"):
            raise Refused(line.decode(errors="replace").strip())


async def connect_login(
    slot: Slot, password: str, ctx: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            slot.address,
            PORT,
            ssl=ctx,
            local_addr=(slot.source, 0) if slot.source else None,
        ),
        STEP_TIMEOUT_S,
    )
    try:
        greeting = await asyncio.wait_for(reader.readline(), STEP_TIMEOUT_S)
        if not greeting.startswith(b"* OK"):
            raise Refused("greeting: " + greeting.decode(errors="replace").strip())
        writer.write(f"a LOGIN {quote(slot.user)} {quote(password)}\r\n".encode())
        await writer.drain()
        await read_tagged(reader, b"a", STEP_TIMEOUT_S)
    except BaseException:
        writer.transport.abort()
        raise
    return reader, writer


def failure_key(exc: BaseException) -> str:
    if isinstance(exc, Refused):
        return str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return f"timeout ({STEP_TIMEOUT_S:.0f} s step)"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Session:
    slot: Slot
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    watcher: asyncio.Task[None] | None = None
    dropped: str | None = None  # why the server ended a held session

    @property
    def alive(self) -> bool:
        return self.writer is not None and self.dropped is None

    async def watch(self) -> None:
        """An idle session gets nothing; EOF means the server dropped it."""
        assert self.reader is not None
        last = b""
        while True:
            line = await self.reader.readline()
            if not line:
                self.dropped = "dropped while held: " + (
                    last.decode(errors="replace").strip() or "EOF"
                )
                return
            last = line

    async def close(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            with contextlib.suppress(BaseException):
                await self.watcher
        writer, reader = self.writer, self.reader
        self.writer = None
        if writer is None or reader is None:
            return
        try:
            if not writer.transport.is_closing():
                writer.write(b"z LOGOUT\r\n")
                await asyncio.wait_for(writer.drain(), CLOSE_TIMEOUT_S)
                with contextlib.suppress(Refused):
                    await read_tagged(reader, b"z", CLOSE_TIMEOUT_S)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            writer.transport.abort()
        except asyncio.CancelledError:
            writer.transport.abort()
            raise


# -- the phases ----------------------------------------------------------------------------


@dataclass
class Results:
    requested: Counter[str] = field(default_factory=Counter)
    held: Counter[str] = field(default_factory=Counter)
    held_direct: Counter[str] = field(default_factory=Counter)
    on_backend: Counter[str] = field(default_factory=Counter)  # held sessions per backend
    failures: Counter[str] = field(default_factory=Counter)
    open_seconds: float = 0.0
    remote_idle: dict[str, dict[str, Any]] = field(default_factory=dict)
    remote_held: dict[str, dict[str, Any]] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(default_factory=dict)
    latency_failures: Counter[str] = field(default_factory=Counter)


async def open_all(
    sessions: list[Session], password: str, ctx: ssl.SSLContext, concurrency: int, deadline: float
) -> Counter[str]:
    """Opens every session (at most `concurrency` handshakes at a time) until the deadline."""
    sem = asyncio.Semaphore(concurrency)
    failures: Counter[str] = Counter()

    async def one(s: Session) -> None:
        async with sem:
            try:
                s.reader, s.writer = await connect_login(s.slot, password, ctx)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure is a result
                failures[f"{s.slot.node}: {failure_key(exc)}"] += 1
                return
        s.watcher = asyncio.create_task(s.watch())

    tasks = [asyncio.create_task(one(s)) for s in sessions]
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if pending:
        failures[f"not logged in before the deadline ({len(pending)} left)"] += len(pending)
    return failures


async def close_all(sessions: list[Session], concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(s: Session) -> None:
        async with sem:
            await s.close()

    tasks = [asyncio.create_task(one(s)) for s in sessions if s.writer is not None]
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=CLOSE_PHASE_S)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for s in sessions:  # whatever is left: drop it
        if s.writer is not None:
            s.writer.transport.abort()
            s.writer = None


def remote(lab: Lab, node: str) -> dict[str, Any]:
    """Runs REMOTE on a node; returns its JSON, or {"error": ...}."""
    try:
        proc = hosts.run(
            lab.ssh_config, node, "python3 -", check=False, input=REMOTE, timeout=SSH_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return {"error": "ssh timed out"}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-200:]}
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


async def remote_all(lab: Lab) -> dict[str, dict[str, Any]]:
    """REMOTE on every node at once, each ssh in a thread of its own: meanwhile the event
    loop keeps serving the sessions."""
    names = list(lab.nodes)
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        found = await asyncio.gather(*(loop.run_in_executor(pool, remote, lab, n) for n in names))
    return dict(zip(names, found, strict=True))


async def measure_latency(lab: Lab, ctx: ssl.SSLContext, samples: int, res: Results) -> None:
    """Sequential logins, each TLS connect + LOGIN + LOGOUT: on the user's backend (direct),
    and on the next mail node after it (proxied)."""
    names = list(lab.nodes)
    kinds = ["direct", "proxied"] if len(names) > 1 else ["direct"]
    for kind in kinds:
        res.latency[kind] = []
        for i in range(samples):
            user = lab.users[i % len(lab.users)]
            home = backend(lab, user)
            if home not in names:  # --nodes: only users whose backend is a measured node
                continue
            node = home
            if kind == "proxied":
                node = names[(names.index(home) + 1) % len(names)]
            slot = Slot(node, lab.nodes[node], user, kind == "direct")
            t0 = time.perf_counter()
            try:
                reader, writer = await connect_login(slot, lab.password, ctx)
                s = Session(slot, reader, writer)
                await s.close()
            except Exception as exc:  # every failure is a result
                res.latency_failures[f"{kind} on {node}: {failure_key(exc)}"] += 1
                continue
            res.latency[kind].append((time.perf_counter() - t0) * 1000)


async def run(args: argparse.Namespace, lab: Lab) -> Results:
    ctx = tls_context(lab.ca_cert)
    res = Results()
    sources = args.sources.split(",") if args.sources else None
    slots = plan(lab, args.sessions, args.per_user, args.direct_only, sources)
    for slot in slots:
        res.requested[slot.node] += 1

    print(f"latency: {args.samples} direct + {args.samples} proxied logins ...", file=sys.stderr)
    await measure_latency(lab, ctx, args.samples, res)
    res.remote_idle = await remote_all(lab)

    sessions = [Session(slot) for slot in slots]
    try:
        print(f"opening {len(sessions)} sessions ...", file=sys.stderr)
        t0 = time.monotonic()
        res.failures = await open_all(
            sessions, lab.password, ctx, args.concurrency, t0 + args.deadline
        )
        res.open_seconds = time.monotonic() - t0
        opened = sum(s.alive for s in sessions)
        print(f"{opened} open after {res.open_seconds:.1f} s; holding ...", file=sys.stderr)
        await asyncio.sleep(args.hold)
        res.remote_held = await remote_all(lab)
        # held at once: open before, during and after the measurement
        for s in sessions:
            if s.alive:
                res.held[s.slot.node] += 1
                res.held_direct[s.slot.node] += s.slot.direct
                res.on_backend[backend(lab, s.slot.user)] += 1
            elif s.dropped:
                res.failures[f"{s.slot.node}: {s.dropped}"] += 1
    finally:
        print("closing ...", file=sys.stderr)
        await close_all(sessions, args.concurrency)
    return res


# -- report --------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def mib(kb: float) -> str:
    return f"{kb / 1024:.2f}"


def table(res: Results, lab: Lab, sessions: int) -> str:
    names = list(lab.nodes)
    cols = [*names, "total"]

    def row(label: str, cells: list[str]) -> str:
        return "| " + " | ".join([label, *cells]) + " |"

    def per_node(f: Any, total: Any = None) -> list[str]:
        cells = [f(n) for n in names]
        return [*cells, total if total is not None else ""]

    def rem(n: str, key: str) -> Any:
        return res.remote_held.get(n, {}).get(key)

    lines = [
        row("", cols),
        "|" + "---|" * (len(cols) + 1),
        row(
            "Sessions requested (connected to the node)",
            per_node(lambda n: str(res.requested[n]), str(sessions)),
        ),
        row(
            "**Sessions held at once** (logged in, idle)",
            per_node(lambda n: f"**{res.held[n]}**", f"**{sum(res.held.values())}**"),
        ),
        row(
            "of which direct / proxied to the other node",
            per_node(
                lambda n: f"{res.held_direct[n]} / {res.held[n] - res.held_direct[n]}",
                f"{sum(res.held_direct.values())} / "
                f"{sum(res.held.values()) - sum(res.held_direct.values())}",
            ),
        ),
        row(
            "Held sessions whose backend is the node (expected `imap` processes)",
            per_node(lambda n: str(res.on_backend[n]), str(sum(res.on_backend.values()))),
        ),
    ]

    def count(n: str, key: str) -> str:
        v = rem(n, key)
        return "n/a" if v is None else str(v)

    def total_of(key: str) -> str:
        vals = [rem(n, key) for n in names]
        return "n/a" if None in vals else str(sum(vals))

    lines.append(
        row("`imap` processes (measured)", per_node(lambda n: count(n, "imap"), total_of("imap")))
    )

    def avg_private(n: str) -> str:
        procs, kb = rem(n, "imap"), rem(n, "imap_private_kb")
        return "n/a" if not procs else mib(kb / procs)

    all_procs = sum(rem(n, "imap") or 0 for n in names)
    all_kb = sum(rem(n, "imap_private_kb") or 0 for n in names)
    lines.append(
        row(
            "Private memory per `imap` process, average (MiB)",
            per_node(avg_private, mib(all_kb / all_procs) if all_procs else "n/a"),
        )
    )

    def login_mem(n: str) -> str:
        before = res.remote_idle.get(n, {}).get("login_private_kb")
        procs, kb = rem(n, "login"), rem(n, "login_private_kb")
        if procs is None or before is None:
            return "n/a"
        return f"{mib(before)} → {mib(kb)} ({procs} proc.)"

    lines.append(row("`imap-login` private memory, total, idle → held (MiB)", per_node(login_mem)))

    def per_proxied(n: str) -> str:
        before = res.remote_idle.get(n, {}).get("login_private_kb")
        kb = rem(n, "login_private_kb")
        proxied = res.held[n] - res.held_direct[n]
        if before is None or kb is None or not proxied:
            return "n/a"
        return mib((kb - before) / proxied)

    # imap-login keeps the memory it freed: meaningful on fresh login processes only.
    lines.append(
        row(
            "... growth per proxied session held there (MiB; fresh `imap-login` only)",
            per_node(per_proxied),
        )
    )

    # The memory cgroup each node sees; nodes that see the same one (same inode) share it.
    def growth(n: str) -> tuple[int, int, int] | None:
        a = res.remote_idle.get(n, {}).get("cgroup_kb")
        b = rem(n, "cgroup_kb")
        if a is None or b is None or a[2] != b[2]:
            return None
        return b[0] - a[0], b[1] - a[1], b[2]

    growths = {n: growth(n) for n in names}
    inodes = Counter(g[2] for g in growths.values() if g)
    unique: dict[int, tuple[int, int, int]] = {}
    for g in growths.values():
        if g:
            unique.setdefault(g[2], g)  # a shared cgroup counts once
    held_total = sum(res.held.values())
    user_kb = sum(g[0] for g in unique.values())
    kernel_kb = sum(g[1] for g in unique.values())
    complete = None not in growths.values()

    def show_growth(n: str) -> str:
        g = growths[n]
        if g is None:
            return "n/a"
        if inodes[g[2]] > 1:
            return "shared"
        return f"{mib(g[0])} + {mib(g[1])}"

    lines.append(
        row(
            "Memory cgroup growth: anonymous (rss) + kernel (MiB)",
            per_node(
                show_growth,
                f"{mib(user_kb)} + {mib(kernel_kb)}" if complete else "n/a",
            ),
        )
    )
    per_session = (
        f"{mib((user_kb + kernel_kb) / held_total)} ({mib(kernel_kb / held_total)} kernel)"
        if complete and held_total
        else "n/a"
    )
    lines.append(row("... per held session, all in (MiB)", [""] * len(names) + [per_session]))
    lines.append(
        row(
            "`service/imap/process_limit`",
            per_node(lambda n: count(n, "process_limit"), total_of("process_limit")),
        )
    )
    lines.append(
        row(
            "Time to open all sessions (s)",
            [""] * len(names) + [f"{res.open_seconds:.1f}"],
        )
    )

    lines += [
        "",
        "| Login (TLS connect + LOGIN + LOGOUT) | samples | p50 (ms) | p95 (ms) | max (ms) |",
        "|---|---|---|---|---|",
    ]
    for kind, values in res.latency.items():
        if values:
            lines.append(
                f"| {kind} | {len(values)} | {pct(values, 50):.1f} | {pct(values, 95):.1f} "
                f"| {max(values):.1f} |"
            )
        else:
            lines.append(f"| {kind} | 0 | n/a | n/a | n/a |")

    errors = {
        n: r["error"] for n, r in {**res.remote_idle, **res.remote_held}.items() if "error" in r
    }
    lines.append("")
    if any(n > 1 for n in inodes.values()):
        lines += [
            "Memory cgroup: the mail nodes see one shared cgroup (one inode), counted once; "
            "it holds whatever else runs in it too (here: every lab container).",
            "",
        ]
    if res.failures or res.latency_failures:
        lines.append("Failures (by the server's reply or the exception):")
        lines.append("")
        for key, times in (res.failures + res.latency_failures).most_common():
            lines.append(f"- {times} x {key}")
    else:
        lines.append("Failures: none.")
    for node, e in errors.items():
        lines.append(f"- ssh measurement on {node} failed: {e}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sessions", type=int, default=4000, help="concurrent sessions (4000)")
    p.add_argument("--concurrency", type=int, default=200, help="handshakes at a time (200)")
    p.add_argument("--deadline", type=float, default=300, help="opening deadline, s (300)")
    p.add_argument("--hold", type=float, default=10, help="hold before measuring, s (10)")
    p.add_argument("--samples", type=int, default=50, help="latency samples per kind (50)")
    p.add_argument("--per-user", type=int, default=MAX_PER_USER, help="max per user (20)")
    p.add_argument("--write", type=Path, help="append the results to this Markdown file")
    p.add_argument("--nodes", help="comma-separated mail nodes to open sessions on (all)")
    p.add_argument("--json", type=Path, help="write requested/held/failures per node here")
    p.add_argument(
        "--direct-only", action="store_true", help="only users whose backend the node is"
    )
    p.add_argument("--sources", help="comma-separated lab host addresses to connect from")
    argv_used = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv_used)
    if not 1 <= args.per_user <= MAX_PER_USER:
        p.error(f"--per-user must be 1..{MAX_PER_USER}")

    lab = read_lab()
    if args.nodes:
        wanted = args.nodes.split(",")
        unknown = [n for n in wanted if n not in lab.nodes]
        if unknown:
            p.error(f"--nodes: not mail nodes of the lab: {', '.join(unknown)}")
        lab = Lab(
            lab.ca_cert,
            lab.ssh_config,
            {n: lab.nodes[n] for n in wanted},
            lab.users,
            lab.password,
            lab.backend_of,
        )
    nofile = raise_nofile()
    if args.sessions + 100 > nofile:
        p.error(f"{args.sessions} sessions need more descriptors than RLIMIT_NOFILE ({nofile})")
    started = datetime.datetime.now(datetime.timezone.utc)
    res = asyncio.run(run(args, lab))
    report = table(res, lab, args.sessions)
    print(report)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "requested": dict(res.requested),
                    "held": dict(res.held),
                    "failures": dict(res.failures),
                    "open_seconds": res.open_seconds,
                },
                indent=2,
            )
        )
    if args.write:
        with args.write.open("a") as f:
            f.write(
                f"\n## {started:%Y-%m-%d %H:%M} UTC: {args.sessions} sessions\n\n"
                f"Run on the lab host: {machine()}. Mail nodes: "
                + ", ".join(f"{n} ({a})" for n, a in lab.nodes.items())
                + f". Command: `.venv/bin/python bench/imap_sessions.py {shlex.join(argv_used)}`"
                f"\n\n{report}"
            )
    return 0 if sum(res.held.values()) == args.sessions else 1


if __name__ == "__main__":
    sys.exit(main())
