"""The 20-host figures, on the lab's `full` topology (the production inventory's hosts).

In one run, on this machine (``make bench-fleet``; it takes the lab over, 25-40 minutes):

1. **Floor**: fresh machines (``lab down`` + ``lab up --topology full``), then on all 20
   at once a bare ``apt-get update && apt-get install`` of the packages the deploy would
   install on each (by its groups; same package cache): what installing alone costs.
2. **Fresh deploy**: fresh machines again, then ``pyinfra inventory/lab.py deploy.py``:
   wall time and operations changed.
3. **No-op re-run**: the same deploy again: wall time and changed operations (must be 0).
4. **One-template change, rolled out**: ``python -m mailcluster.rollout`` with one comment
   line more in dovecot.conf (validated and reloaded on 16 mail nodes, in batches of 25%,
   each batch health-checked), then rolled back.
5. **IMAP sessions held per node, tuned vs stock**: ``bench/imap_sessions.py`` against one
   mail node as deployed, and against another whose dovecot.conf has the deploy's sizing
   lines removed (so Dovecot's own defaults apply, everything else equal).
6. **Throughput**: ``bench/smtp_throughput.py``: messages accepted and delivered per second
   over all 16 mail nodes.

Prints a Markdown table; ``--write BENCHMARKS.md`` appends it with the machine it ran on.
Nothing else may use the lab meanwhile. At the end the lab is the deployed `full` lab;
``make lab`` brings back the small one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from labinfo import REPO, lab_info, machine

from mailcluster.lab.platforms import PLATFORMS
from mailcluster.platform import PHP
from mailcluster.roles.base import BASE_PACKAGES
from mailcluster.roles.dovecot import PACKAGES as DOVECOT
from mailcluster.roles.exim import PACKAGES as EXIM
from mailcluster.roles.fail2ban import PACKAGES as FAIL2BAN
from mailcluster.roles.webmail import packages as webmail_role_packages
from tests import hosts

PACKAGES = {"mail": [*EXIM, *DOVECOT, *FAIL2BAN], "db": ["postgresql"]}


def webmail_packages(platform: str) -> list[str]:
    """What mailcluster/roles/webmail.py installs on a host of the lab ``platform``."""
    p = PLATFORMS[platform]
    return [*webmail_role_packages(PHP[(p.distro, p.major)]), *FAIL2BAN]


PY = sys.executable


def log(text: str) -> None:
    print(f"[{time.strftime('%T')}] {text}", file=sys.stderr, flush=True)


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    took = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}")
    return took, out


def changed(out: str) -> tuple[int, int]:
    """(operations that changed something, operations) from pyinfra's Grand total row."""
    row = next(line for line in out.splitlines() if line.strip().startswith("Grand total"))
    hosts_ops, success, _error, no_change = row.split()[2:6]
    n = 0 if success == "-" else int(success)
    return n, n + (0 if no_change == "-" else int(no_change))


def fresh_lab() -> float:
    timed([PY, "-m", "mailcluster.lab", "down"])
    took, _ = timed([PY, "-m", "mailcluster.lab", "up", "--topology", "full"])
    return took


def versions_of(info: dict[str, Any], name: str) -> str:
    """The mail daemons' versions on mail node ``name``, as the table names them."""
    command = "dovecot --version; exim4 --version | head -1"
    proc = hosts.run(info["ssh_config"], name, command, check=False, timeout=None)
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or len(lines) < 2:
        return f"{name}: versions unknown ({proc.stderr.strip()[-200:]})"
    return f"{name}: Dovecot {lines[0].split()[0]}, {lines[1].split(' #')[0]}"


def floor(info: dict[str, Any]) -> float:
    site = Path(info["site_file"]).read_text()
    proxy = re.search(r"apt_proxy: (\S+)", site)
    opt = f"-o Acquire::http::Proxy={proxy.group(1)}" if proxy else ""

    def install(h: dict[str, Any]) -> None:
        pkgs = list(BASE_PACKAGES)
        for g in h["groups"]:
            pkgs += PACKAGES.get(g, [])
        if "webmail" in h["groups"]:
            pkgs += webmail_packages(h["platform"])
        pre = ""
        if "webmail" in h["groups"]:  # as the role preseeds it: no dbconfig prompt
            pre = "echo 'roundcube-core roundcube/dbconfig-install boolean false' | "
            pre += "debconf-set-selections && "
        command = (
            f"{pre}apt-get {opt} update -qq && DEBIAN_FRONTEND=noninteractive apt-get {opt} "
            f"install -y -qq --no-install-recommends {' '.join(sorted(set(pkgs)))} >/dev/null"
        )
        try:
            hosts.run(info["ssh_config"], h["name"], command, timeout=None)
        except hosts.CommandFailed as failed:  # the run stops, without a traceback
            raise SystemExit(str(failed)) from None

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(info["hosts"])) as pool:
        list(pool.map(install, info["hosts"]))
    return time.monotonic() - t0


def comment_template(folder: Path) -> Path:
    text = (REPO / "templates" / "dovecot" / "dovecot.conf.j2").read_text()
    (folder / "dovecot").mkdir(parents=True)
    (folder / "dovecot" / "dovecot.conf.j2").write_text(text + "\n# changed by bench/fleet.py\n")
    return folder


def stock_template(folder: Path) -> Path:
    """dovecot.conf without the deploy's sizing: Dovecot's compiled-in defaults apply.
    Except ``process_min_avail`` (how many login processes start at once, not a limit):
    without it none runs until a client comes, and mailcluster-reload, which waits for a
    login process of the new configuration, refuses the reload (on 20.04 that stopped
    the first run of this benchmark)."""
    text = (REPO / "templates" / "dovecot" / "dovecot.conf.j2").read_text()
    kept = [
        line for line in text.splitlines() if "limits." not in line or "process_min_avail" in line
    ]
    (folder / "dovecot").mkdir(parents=True)
    (folder / "dovecot" / "dovecot.conf.j2").write_text("\n".join(kept) + "\n")
    return folder


def sessions(info: dict[str, Any], node: str, count: int, out: Path) -> dict[str, Any]:
    """Sessions of users whose backend ``node`` is (each one an imap process there),
    from all of the lab host's client addresses (Dovecot counts 20 per user and address)."""
    cmd = [PY, "bench/imap_sessions.py", "--nodes", node, "--sessions", str(count)]
    cmd += ["--deadline", "180", "--samples", "10", "--json", str(out), "--direct-only"]
    cmd += ["--sources", ",".join(info["client_addresses"])]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if not out.exists():
        raise SystemExit(f"imap_sessions.py on {node} failed:\n{proc.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 1500: above Dovecot's stock imap process_limit (1024), within what the ~15 users a
    # node is the backend of can open from the lab host's 8 client addresses (20 each).
    ap.add_argument("--sessions", type=int, default=1500, help="IMAP sessions per node (1500)")
    ap.add_argument("--messages", type=int, default=1000, help="throughput messages (1000)")
    ap.add_argument("--write", type=Path, help="append the table to this Markdown file")
    ap.add_argument(
        "--only-load",
        action="store_true",
        help="skip the deploy figures: sessions and throughput on the deployed full lab",
    )
    args = ap.parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    rows: list[tuple[str, str, str]] = []

    def add(figure: str, value: str, notes: str = "") -> None:
        rows.append((figure, value, notes))

    deploy = [str(Path(PY).with_name("pyinfra")), "-y", "inventory/lab.py", "deploy.py"]

    if args.only_load:
        info = lab_info()
        if info["topology"] != "full":
            raise SystemExit("--only-load needs the deployed full lab (make bench-fleet)")
    else:
        log("fresh full lab, then the floor (bare apt-get install on all 20)")
        up_s = fresh_lab()
        info = lab_info()
        floor_s = floor(info)
        add("`lab up --topology full` (20 machines, warm base image)", f"{up_s:.0f} s", "")
        rows.append(
            (
                "Floor: bare `apt-get install` of the same packages, 20 hosts",
                f"{floor_s:.0f} s",
                "same cache, all hosts at once",
            )
        )

        log("fresh full lab again, then the fresh deploy")
        fresh_lab()
        deploy_s, out = timed(deploy)
        n, ops = changed(out)
        rows.append(
            (
                "Fresh deploy, 20 hosts",
                f"{deploy_s:.0f} s",
                f"{n} of {ops} operations changed; {deploy_s / floor_s:.1f}x the floor",
            )
        )

        log("no-op re-run")
        noop_s, out = timed(deploy)
        n, ops = changed(out)
        add("No-op re-run", f"{noop_s:.0f} s", f"{n} of {ops} operations changed")

    with tempfile.TemporaryDirectory() as tmp:
        if not args.only_load:
            log("one-template change, rolled out in batches")
            env = {"MAILCLUSTER_TEMPLATE_PATH": str(comment_template(Path(tmp) / "c"))}
            roll_s, out = timed([PY, "-m", "mailcluster.rollout", "-i", "inventory/lab.py"], env)
            batches = len(re.findall(r"batch \d+/\d+: healthy", out))
            rows.append(
                (
                    "One-template change (dovecot.conf), rolling deploy",
                    f"{roll_s:.0f} s",
                    f"{batches} batches, each health-checked",
                )
            )
            back_s, _ = timed([PY, "-m", "mailcluster.rollout", "-i", "inventory/lab.py"])
            add("... and rolled back", f"{back_s:.0f} s", "")

        mail = [h["name"] for h in info["hosts"] if "mail" in h["groups"]]
        tuned, stock = mail[0], mail[1]
        log(f"IMAP sessions: {tuned} tuned, {stock} with Dovecot's stock limits")
        env = {"MAILCLUSTER_TEMPLATE_PATH": str(stock_template(Path(tmp) / "s"))}
        timed([*deploy, "--limit", stock], env)
        try:
            for name, label in ((tuned, "tuned (as deployed)"), (stock, "stock limits")):
                got = sessions(info, name, args.sessions, Path(tmp) / f"{name}.json")
                held = got["held"].get(name, 0)
                why = ", ".join(f"{k} x{v}" for k, v in list(got["failures"].items())[:2])
                rows.append(
                    (
                        f"IMAP sessions held on one node, {label}",
                        f"{held} of {args.sessions}",
                        why[:160],
                    )
                )
        finally:
            timed([*deploy, "--limit", stock])

    log("mailctl status over the 20 hosts")
    status_runs = []
    out = ""
    for _ in range(3):  # its exit status is the cluster's state, not this script's concern
        t0 = time.monotonic()
        out = subprocess.run(
            [PY, "-m", "mailcluster.mailctl", "-i", "inventory/lab.py", "status"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout
        status_runs.append(time.monotonic() - t0)
    head = out.splitlines()[0] if out else "?"
    rows.append(
        (
            "`mailctl status`, 20 hosts (every host asked, every TLS port read)",
            f"{min(status_runs):.1f} / {max(status_runs):.1f} s (min / max of 3)",
            head.split(" | ")[0][:120],
        )
    )

    log("throughput over the 16 mail nodes")
    out_file = Path(tempfile.mkstemp(suffix=".txt")[1])
    _, out = timed([PY, "bench/smtp_throughput.py", "--messages", str(args.messages)])
    out_file.write_text(out)
    rate = re.search(r"Accepted and delivered/s\**\s*\|\s*\**([0-9.]+)", out)
    lost = re.search(r"\| Lost \(accepted, not delivered by the deadline\) \| ([0-9]+)", out)
    rows.append(
        (
            f"SMTP: {args.messages} messages accepted and delivered",
            f"{rate.group(1) if rate else '?'} msg/s",
            f"lost: {lost.group(1) if lost else '?'} (full output: {out_file})",
        )
    )

    table = "| figure | value | notes |\n|---|---|---|\n"
    plats: dict[str, list[str]] = {}
    for h in info["hosts"]:
        plats.setdefault(h["platform"], []).append(h["name"])
    on = "; ".join(f"{p}: {len(names)} hosts ({', '.join(names)})" for p, names in plats.items())
    versions = versions_of(info, next(h["name"] for h in info["hosts"] if "mail" in h["groups"]))
    table += "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)
    print(table)
    if args.write:
        with args.write.open("a") as f:
            f.write(
                f"\n## The 20-host figures (`bench/fleet.py`), {started:%Y-%m-%d %H:%M} UTC\n\n"
                f"Lab `full` topology (the production inventory's 20 hosts as lab machines) "
                f"on {machine()}. Platforms: {on}. On {versions}. "
                f"Command: `make bench-fleet`.\n\n{table}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
