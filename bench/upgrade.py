"""The OS upgrade under load: `mailctl upgrade` replaces every mail node of the lab with
one on ``--to`` while clients log in through every node in service and mail arrives on
port 25.

From the lab host, against a deployed lab whose mail nodes run the old release
(`make test-upgrade` sets one up: the small topology plus a spare mail node, Ubuntu
20.04):

* **Logins**: through every mail node in service, each of ``--users`` lab accounts logs
  in over IMAPS and over SMTP submission (587, STARTTLS, AUTH) in turn, 100 ms apart
  (tests/e2e/login_prober.py). A new node joins the rotation once the upgrade has
  deployed it; an old one leaves it when the upgrade marks it draining, as an operator
  takes a node out of DNS before draining it (docs/RUNBOOK.md section 6).
* **Mail**: ``--rate`` messages a second over port 25 (no authentication, as other mail
  servers send), each with its own Message-ID, to the lab's accounts, first to one node
  in service (round robin) and, like any MTA, to the next when refused.
* **Webmail**: RoundCube's login page fetched (HTTPS, the lab CA verified) every 0.5 s
  from each webmail host in service, as a load balancer would check it; a new one joins
  once deployed, an old one leaves before it is removed. The requests that fail are the
  webmail's maintenance window (its database copied to the new host).
* **The upgrade**: `mailcluster.upgrade.upgrade` (what `mailctl upgrade` runs) with each
  host paired to a new name (mail nodes ``--batch`` at a time, then the webmail and
  database hosts; ``--mail-only`` leaves those).
* With ``--fault-once`` (what `make test-upgrade` runs): when the first batch's closing
  health check starts, fail2ban is stopped on a mail node in service (a real fault:
  `mailctl status` judges it CRITICAL; made at that moment because the batch's deploys
  would start it again). The upgrade must stop there with the cluster serving; then, as
  an operator would, fail2ban is started and the upgrade resumed with no node names
  (what `mailctl upgrade` does when run again), the clients going on throughout.
* Then every accepted message must be in its recipient's Maildir exactly once.

Reports seconds in all and per step, logins attempted and failed, messages sent,
accepted, delivered, duplicated and lost, webmail requests that failed and the longest
time the webmail did not answer, and what /etc/os-release says on every host
afterwards; exits 1 on any failed login, loss or duplicate.

    .venv/bin/python bench/upgrade.py --to ubuntu24.04            # small + spare: ~15 min
    .venv/bin/python bench/upgrade.py --to ubuntu24.04 --batch 4  # the full topology
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import secrets
import smtplib
import ssl
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import labinfo
from labinfo import lab_info

from tests import hosts
from tests.e2e.login_prober import Prober

INVENTORY = "inventory/lab.py"


def log(text: str) -> None:
    print(f"[{time.strftime('%T')}] {text}", flush=True)


def default_pairs(names: list[str]) -> list[tuple[str, str]]:
    """mail01..mailNN -> mail(NN+1).., webmail01 -> webmail02: per name stem, new names
    after the highest number in use."""
    stems: dict[str, list[int]] = {}
    for n in names:
        if m := re.fullmatch(r"(.*?)(\d+)", n):
            stems.setdefault(m.group(1), []).append(int(m.group(2)))
    pairs = []
    for old in names:
        m = re.fullmatch(r"(.*?)(\d+)", old)
        stem = m.group(1) if m else old
        numbers = stems.setdefault(stem, [])
        width = max(2, *(len(str(n)) for n in numbers)) if numbers else 2
        numbers.append(max(numbers, default=0) + 1)
        pairs.append((old, f"{stem}{numbers[-1]:0{width}d}"))
    return pairs


@dataclass
class Service:
    """The mail nodes clients use right now, with a prober per node and user."""

    lab: dict[str, Any]
    users: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    nodes: dict[str, str] = field(default_factory=dict)  # name -> address, in service
    probers: dict[str, list[tuple[Prober, threading.Event, threading.Thread]]] = field(
        default_factory=dict
    )
    retired: list[Prober] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    web: dict[str, str] = field(default_factory=dict)  # webmail hosts in service

    def join_web(self, name: str, address: str) -> None:
        with self.lock:
            if name in self.web:
                return
            self.web[name] = address
        log(f"  webmail requests now go to {name} ({address})")

    def leave_web(self, name: str) -> None:
        with self.lock:
            gone = self.web.pop(name, None)
        if gone:
            log(f"  webmail requests no longer go to {name}")

    def web_in_service(self) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.web.items())

    def join(self, name: str, address: str) -> None:
        with self.lock:
            if name in self.nodes:
                return
            self.nodes[name] = address
            started = []
            for user in self.users:
                prober, stop = Prober(self.lab, address, user), threading.Event()
                thread = threading.Thread(target=prober.run, args=(stop,), daemon=True)
                thread.start()
                started.append((prober, stop, thread))
            self.probers[name] = started
        log(f"  clients now use {name} ({address})")

    def leave(self, name: str) -> None:
        with self.lock:
            self.nodes.pop(name, None)
            gone = self.probers.pop(name, [])
        for prober, stop, thread in gone:
            stop.set()
            thread.join(timeout=60)
            self.retired.append(prober)
        if gone:
            log(f"  clients no longer use {name}")

    def in_service(self) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.nodes.items())

    def all_probers(self) -> list[Prober]:
        with self.lock:
            live = [p for group in self.probers.values() for p, _, _ in group]
        return live + self.retired


@dataclass
class Mail:
    msg_id: str
    user: str
    accepted_on: str | None = None
    attempts: list[str] = field(default_factory=list)


def mail_sender(lab: dict[str, Any], service: Service, rate: float, out: list[Mail]) -> None:
    run_id = secrets.token_hex(4)
    users = [a["user"] for a in lab["accounts"]]
    for i in itertools.count():
        if service.stop.is_set():
            return
        m = Mail(f"<upgrade-{run_id}-{i}@{lab['domain']}>", users[i % len(users)])
        out.append(m)
        for k in range(10):
            nodes = service.in_service()
            if not nodes:
                time.sleep(1)
                continue
            name, address = nodes[(i + k) % len(nodes)]
            msg = EmailMessage()
            msg["From"] = f"load@{lab['domain']}"
            msg["To"] = f"{m.user}@{lab['domain']}"
            msg["Subject"] = f"upgrade {i}"
            msg["Message-ID"] = m.msg_id
            msg.set_content(f"message {i} of an upgrade run\n")
            try:
                with smtplib.SMTP(address, 25, timeout=30) as smtp:
                    smtp.ehlo("load.example.org")
                    smtp.send_message(msg, from_addr="", to_addrs=[msg["To"]])
                m.accepted_on = name
                break
            except (smtplib.SMTPException, OSError) as exc:
                m.attempts.append(f"{name}: {exc!r}"[:200])
                time.sleep(1)
        time.sleep(1 / rate)


@dataclass
class WebProbe:
    """RoundCube's login page, fetched every ``gap`` seconds from the webmail hosts in
    service in turn; failures kept with their time."""

    lab: dict[str, Any]
    service: Service
    gap: float = 0.5
    requests: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)

    def run(self) -> None:
        ctx = ssl.create_default_context(cafile=self.lab["ca_cert"])
        for i in itertools.count():
            if self.service.stop.is_set():
                return
            hosts = self.service.web_in_service()
            if hosts:
                name, address = hosts[i % len(hosts)]
                self.requests += 1
                now = time.monotonic()
                try:
                    with urllib.request.urlopen(
                        f"https://{address}/", context=ctx, timeout=20
                    ) as resp:
                        body = resp.read().decode(errors="replace")
                    if "rcmloginuser" not in body:
                        raise ValueError("no login form in the page")
                    self.answered.append(now)
                except (OSError, ValueError) as exc:
                    self.failures.append((now, f"{time.strftime('%T')} {name}: {exc!r}"[:200]))
            time.sleep(self.gap)

    def longest_outage(self) -> float:
        """The longest time from a failed request to the next answered one."""
        longest, answered = 0.0, sorted(self.answered)
        for t, _ in self.failures:
            later = [a for a in answered if a > t]
            start = max([a for a in answered if a < t], default=t)
            if later:
                longest = max(longest, later[0] - start)
        return round(longest, 1)


def hooked_runner(
    service: Service, batches: list[dict[str, Any]], fault: dict[str, Any] | None = None
) -> Any:
    """upgrade.Runner, telling the clients which nodes are in service as it goes; with
    ``fault``, stopping fail2ban on a node in service as the second health check (the
    first batch's closing one) starts, once."""
    from mailcluster import upgrade

    class Hooked(upgrade.Runner):
        checks = 0

        def health(self, site: Any, connect: dict[str, dict]) -> tuple[int, str]:
            type(self).checks += 1
            if fault is not None and type(self).checks == 2 and "node" not in fault:
                node = next(h.name for h in site.in_group("mail") if not h.draining)
                hosts.run(service.lab["ssh_config"], node, "systemctl stop fail2ban")
                fault.update(node=node, at=time.strftime("%T"))
                log(f"  fault: fail2ban stopped on {node} as the health check starts")
            return super().health(site, connect)

        def lab_cli(self, *args: str) -> None:
            if args and args[0] == "drain":
                service.leave(args[1])  # out of DNS first, then drained
            if args and args[0] == "remove":
                service.leave_web(args[1])  # out of the load balancer, then gone
            super().lab_cli(*args)

        def deploy(self, what: str, limit: str | None = None, deploy_file: str = "deploy.py"):
            started = time.monotonic()
            super().deploy(what, limit, deploy_file)
            batches.append({"step": what, "seconds": round(time.monotonic() - started)})
            if deploy_file == "deploy.py":
                site, _ = self.site()
                for h in site.in_group("mail"):
                    if not h.draining:
                        service.join(h.name, str(h.address))
                for h in site.in_group("webmail"):
                    service.join_web(h.name, str(h.address))

    return Hooked


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--to", default="ubuntu24.04", help="the new release (a lab platform)")
    ap.add_argument("--batch", type=int, default=1, help="old nodes replaced at a time")
    ap.add_argument("--users", type=int, default=2, help="prober accounts per node (2)")
    ap.add_argument("--rate", type=float, default=2.0, help="port-25 messages a second")
    ap.add_argument("--deadline", type=int, default=300, help="seconds to wait for delivery")
    ap.add_argument("--mail-only", action="store_true", help="leave webmail and db hosts")
    ap.add_argument("--json", help="write the report here too")
    ap.add_argument(
        "--fault-once",
        action="store_true",
        help="fail the first batch's health check (fail2ban stopped), then resume",
    )
    args = ap.parse_args(argv)

    from mailcluster import upgrade

    lab = lab_info()
    olds = [h["name"] for h in lab["hosts"] if "mail" in h["groups"]]
    if not args.mail_only:
        olds += [h["name"] for h in lab["hosts"] if "mail" not in h["groups"]]
    pairs = default_pairs(olds)
    users = [a["user"] for a in lab["accounts"]][: args.users]
    log(f"upgrade {', '.join(f'{o}={n}' for o, n in pairs)} to {args.to}, batch {args.batch}")

    service = Service(lab, users)
    for h in lab["hosts"]:
        if "mail" in h["groups"]:
            service.join(h["name"], h["address"])
        elif "webmail" in h["groups"]:
            service.join_web(h["name"], h["address"])
    mails: list[Mail] = []
    sender = threading.Thread(target=mail_sender, args=(lab, service, args.rate, mails))
    sender.start()
    web = WebProbe(lab, service)
    web_thread = threading.Thread(target=web.run, daemon=True)
    web_thread.start()
    steps: list[dict[str, Any]] = []
    started = time.monotonic()
    error = None
    fault: dict[str, Any] | None = {} if args.fault_once else None
    runner = hooked_runner(service, steps, fault)
    try:
        try:
            upgrade.upgrade(INVENTORY, pairs, args.to, args.batch, runner=runner)
        except upgrade.UpgradeError as exc:
            if fault is None or "node" not in fault:
                raise
            fault["stop"] = str(exc)
            log(f"the upgrade stopped on the fault: {str(exc).splitlines()[0]}")
            hosts.run(lab["ssh_config"], fault["node"], "systemctl start fail2ban")
            log(f"fail2ban started on {fault['node']}; the upgrade resumed (no node names)")
            fault["resumed_at"] = time.strftime("%T")
            upgrade.upgrade(INVENTORY, [], args.to, args.batch, runner=runner)
        if fault is not None and "stop" not in fault:
            error = f"the fault ({fault or 'never made'}) did not stop the upgrade"
    except upgrade.UpgradeError as exc:
        error = str(exc)
        log(f"the upgrade stopped: {exc}")
    finally:
        upgrade_s = time.monotonic() - started
        time.sleep(5)
        service.stop.set()
        sender.join()
        web_thread.join(timeout=60)
        for name, _ in service.in_service():
            service.leave(name)

    lab = lab_info()
    now = [h for h in lab["hosts"] if "mail" in h["groups"]]
    everyone = lab["hosts"]
    accepted = [m for m in mails if m.accepted_on]
    wanted = {m.msg_id for m in accepted}
    users_mailed = {m.user for m in mails}
    deadline = time.monotonic() + args.deadline
    while True:
        counts = labinfo.maildir_counts(users_mailed, "<upgrade-")
        if wanted <= set(counts) or time.monotonic() > deadline:
            break
        for h in now:
            hosts.run(lab["ssh_config"], h["name"], "exim4 -qff", check=False, timeout=300)
        time.sleep(5)
    time.sleep(5)  # late duplicates
    counts = labinfo.maildir_counts(users_mailed, "<upgrade-")
    probers = service.all_probers()
    failures = [f for p in probers for f in p.failures]
    releases = {
        h["name"]: hosts.run(
            lab["ssh_config"], h["name"], ". /etc/os-release; echo $ID $VERSION_ID", check=False
        ).stdout.strip()
        for h in everyone
    }
    report = {
        "to": args.to,
        "pairs": [f"{o}={n}" for o, n in pairs],
        "batch": args.batch,
        "machine": labinfo.machine(),
        "seconds": round(upgrade_s),
        "steps": steps,
        "logins": sum(p.attempts for p in probers),
        "failed_logins": len(failures),
        "failure_examples": failures[:10],
        "sent": len(mails),
        "accepted": len(accepted),
        "delivered": sum(1 for m in accepted if counts[m.msg_id] >= 1),
        "duplicated": sum(1 for m in accepted if counts[m.msg_id] > 1),
        "lost": sum(1 for m in accepted if counts[m.msg_id] == 0),
        "retried": sum(1 for m in mails if m.attempts),
        "webmail_requests": web.requests,
        "webmail_failed": len(web.failures),
        "webmail_longest_outage_s": web.longest_outage(),
        "webmail_failure_examples": [f for _, f in web.failures[:5]],
        "releases": releases,
        "error": error,
        "fault": fault,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(report, indent=2) + "\n")
    bad = error or failures or report["lost"] or report["duplicated"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
