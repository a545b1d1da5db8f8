"""What a reload costs a client that connects in that moment: how long its connection
waits while `mailcluster-reload` reloads Exim or Dovecot on a mail node, next to a plain
`systemctl reload` of the same daemon.

For each daemon and way of reloading, on the lab's first mail node: a client on the lab
host opens a TCP connection to the daemon's port (587 for Exim, 993 for Dovecot) every
20 ms, records how long connect() took or how it failed, and closes it; meanwhile the
node reloads the daemon ``--reloads`` times, 2 s apart, timing each reload on the node.
Only connect() is measured: tests/e2e/test_reload.py checks whole logins.

Run (lab up and deployed; from the repository root)::

    .venv/bin/python bench/reload_hold.py --reloads 10
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field

from labinfo import lab_info, machine, mail_nodes

from mailcluster import reloads
from tests import hosts

PORTS = {"exim4": 587, "dovecot": 993}
INTERVAL_S = 0.02
CONNECT_TIMEOUT_S = 10.0
GAP_S = 2.0


@dataclass
class Connects:
    waits: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def run(self, address: str, port: int, stop: threading.Event) -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                socket.create_connection((address, port), timeout=CONNECT_TIMEOUT_S).close()
                self.waits.append(time.monotonic() - start)
            except OSError as exc:
                self.failures.append(type(exc).__name__)
            time.sleep(INTERVAL_S)


def reload_times(ssh_config: str, node: str, command: str, count: int) -> list[float]:
    """Runs ``command`` on the node ``count`` times, GAP_S apart; its durations there."""
    timed = f"for i in $(seq {count}); do s=$(date +%s%N); {command} >&2 || exit 1; "
    timed += f"echo $(( $(date +%s%N) - s )); sleep {GAP_S}; done"
    out = hosts.run(
        ssh_config, node, f"sh -c {shlex.quote(timed)}", timeout=count * (GAP_S + 30) + 30
    ).stdout
    return [int(ns) / 1e9 for ns in out.split()]


def measure(info: dict, node: str, address: str, service: str, how: str, count: int) -> str:
    command = (
        reloads.command(service) if how == "mailcluster-reload" else f"systemctl reload {service}"
    )
    connects = Connects()
    stop = threading.Event()
    client = threading.Thread(target=connects.run, args=(address, PORTS[service], stop))
    client.start()
    try:
        time.sleep(1)
        durations = reload_times(info["ssh_config"], node, command, count)
        time.sleep(1)
    finally:
        stop.set()
        client.join()
    waits = sorted(connects.waits)
    slow = sum(1 for w in waits if w > 0.5)
    return (
        f"| {service} ({PORTS[service]}) | {how} | {len(durations)} "
        f"| {statistics.median(durations):.2f} / {max(durations):.2f} "
        f"| {len(waits) + len(connects.failures)} | {len(connects.failures)} "
        f"| {slow} | {waits[-1]:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=10)
    args = parser.parse_args()
    info = lab_info()
    node, address = next(iter(mail_nodes(info).items()))
    rows = [
        measure(info, node, address, service, how, args.reloads)
        for service in PORTS
        for how in ("systemctl reload", "mailcluster-reload")
    ]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{when}, {node} of the lab; lab host: {machine()}\n")
    print(
        "| daemon (port) | reload | reloads | reload time p50 / max (s) "
        "| connections | refused or failed | waited > 0.5 s | slowest connect (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
