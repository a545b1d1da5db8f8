"""`mailctl status`: one view of the cluster's health, for an operator and for monitoring.

Every host is asked at once (one SSH command each, run in parallel) and every live TLS
port is read from the deploying machine, as a client would see it. What is found is
judged against the site's thresholds (site.py, ``monitoring``) and summed up by the
Nagios plugin convention: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, and a first line
``MAILCLUSTER <STATE> - ...`` that existing monitoring can run as a check.

What counts as what (the reasons are in site.py's ``Monitoring``):
- CRITICAL: a host that does not answer SSH; a service that is not active; a mail node
  fenced after a crash (roles/fencing.py); a mail node
  whose backend map differs from the other nodes' (two servers could then write one
  Maildir); a certificate on a live port with fewer than ``cert_days_critical`` days
  left (or none at all); a queue over ``queue_critical`` or older than
  ``queue_age_critical_s``.
- WARNING: chrony not synchronised; a queue over ``queue_warning`` or older than
  ``queue_age_warning_s``; frozen messages; a certificate within ``cert_days_warning``.
- Shown, not judged: IMAP sessions, active bans, draining or failed marks (the site
  file's decisions, not faults).
- UNKNOWN: a host that answered but whose answer could not be read.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from mailcluster import site as site_mod

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATE_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
# Severity order for the summary: UNKNOWN sits between WARNING and CRITICAL (a check
# that cannot see is worse than a warning, not as bad as a known outage).
_RANK = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}

SSH_TIMEOUT_S = 8
TLS_TIMEOUT_S = 5

# Services that must be active, by group (the roles that install them).
SERVICES = {
    "mail": ("dovecot", "exim4", "fail2ban", "chrony"),
    "webmail": ("nginx", "php-fpm", "fail2ban", "chrony"),
    "db": ("postgresql", "chrony"),
}
# Live TLS ports, by group: (port, how TLS starts).
TLS_PORTS = {
    "mail": ((993, "tls"), (465, "tls"), (143, "imap"), (587, "smtp"), (25, "smtp")),
    "webmail": ((443, "tls"),),
}

# What each host is asked: a shell script (status.sh), run by ssh as `sh -s -- ARGS`.
HOST_SCRIPT = Path(__file__).with_name("status.sh")


@dataclass
class Finding:
    level: int
    host: str
    what: str

    def line(self) -> str:
        return f"{STATE_NAMES[self.level]:<8} {self.host}: {self.what}"


@dataclass
class HostStatus:
    name: str
    address: str
    groups: list[str]
    fqdn: str = ""
    reachable: bool = False
    error: str = ""
    services: dict[str, str] = field(default_factory=dict)
    chrony: str | None = None
    imap_sessions: int | None = None
    queue: int | None = None
    queue_oldest_s: int | None = None
    frozen: int | None = None
    map_id: str | None = None
    bans: dict[str, int] = field(default_factory=dict)
    cert_days: dict[str, float | None] = field(default_factory=dict)
    cert_errors: dict[str, str] = field(default_factory=dict)
    marks: list[str] = field(default_factory=list)
    fenced: bool = False
    seconds: float = 0.0


# -- asking a host ---------------------------------------------------------------------


def ssh_command(connect: dict[str, Any], address: str) -> list[str]:
    """ssh with the inventory's connection data for a host (pyinfra's ssh_* keys)."""
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_TIMEOUT_S // 2}"]
    if connect.get("ssh_key"):
        cmd += ["-i", str(connect["ssh_key"]), "-o", "IdentitiesOnly=yes"]
    if connect.get("ssh_known_hosts_file"):
        cmd += ["-o", f"UserKnownHostsFile={connect['ssh_known_hosts_file']}"]
    if connect.get("ssh_strict_host_key_checking"):
        cmd += ["-o", f"StrictHostKeyChecking={connect['ssh_strict_host_key_checking']}"]
    if connect.get("ssh_port"):
        cmd += ["-p", str(connect["ssh_port"])]
    user = connect.get("ssh_user")
    host = str(connect.get("ssh_hostname") or address)
    return [*cmd, f"{user}@{host}" if user else host]


def _age_seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    return int(text[:-1]) * units[text[-1]]


def parse_host_output(h: HostStatus, text: str) -> None:
    """Fill ``h`` from the host script's lines; raises ValueError on an unreadable one."""
    ages: list[int] = []
    frozen = 0
    if not text.rstrip().endswith("end"):
        raise ValueError("the answer ended early")
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        key, rest = parts[0], parts[1:]
        if key == "unit":
            h.services[rest[0]] = rest[1] if len(rest) > 1 else "unknown"
        elif key == "chrony":
            h.chrony = " ".join(rest)
        elif key == "imap_sessions":
            h.imap_sessions = int(rest[0])
        elif key == "queue":
            h.queue = int(rest[0]) if rest and rest[0].isdigit() else None
        elif key == "age":
            ages.append(_age_seconds(rest[0]))
        elif key == "frozen_one":
            frozen += 1
        elif key == "fenced":
            h.fenced = True
        elif key == "map":
            h.map_id = rest[0]
        elif key == "bans":
            h.bans[rest[0]] = int(rest[1]) if len(rest) > 1 and rest[1].isdigit() else 0
    if "mail" in h.groups:
        h.queue_oldest_s = max(ages, default=0)
        h.frozen = frozen


def ask_host(h: HostStatus, connect: dict[str, Any]) -> None:
    units = sorted({u for g in h.groups for u in SERVICES.get(g, ())})
    args = [str(int("mail" in h.groups)), h.fqdn, *units]
    try:
        proc = subprocess.run(
            [*ssh_command(connect, h.address), "sh -s -- " + shlex.join(args)],
            input=HOST_SCRIPT.read_text(),
            capture_output=True,
            text=True,
            timeout=SSH_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        h.error = f"no answer by SSH within {SSH_TIMEOUT_S}s"
        return
    if proc.returncode == 255:
        h.error = "SSH: " + (proc.stderr.strip().splitlines() or ["connection failed"])[-1]
        return
    h.reachable = True
    try:
        parse_host_output(h, proc.stdout)
    except (ValueError, IndexError, KeyError) as exc:
        h.error = f"unreadable answer ({exc}): {proc.stderr.strip()[-200:]}"


# -- reading a certificate from a live port --------------------------------------------


def _recv_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


def _starttls(sock: socket.socket, protocol: str) -> None:
    if protocol == "imap":
        _recv_line(sock)
        sock.sendall(b"a STARTTLS\r\n")
        while not (line := _recv_line(sock)).startswith(b"a "):
            pass
        if not line.startswith(b"a OK"):
            raise OSError(f"STARTTLS refused: {line.decode(errors='replace').strip()}")
    elif protocol == "smtp":
        while (line := _recv_line(sock))[3:4] == b"-":
            pass
        sock.sendall(b"EHLO mailctl-status\r\n")
        while (line := _recv_line(sock))[3:4] == b"-":
            pass
        sock.sendall(b"STARTTLS\r\n")
        line = _recv_line(sock)
        if not line.startswith(b"220"):
            raise OSError(f"STARTTLS refused: {line.decode(errors='replace').strip()}")


def cert_days_left(address: str, port: int, protocol: str, now: dt.datetime) -> float:
    """Days until the certificate served on ``address:port`` expires (negative: expired).

    The certificate is read whatever it is (expired, wrong name): judging it is the
    caller's job, and a check that refused to look would hide exactly what it is for."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, port), timeout=TLS_TIMEOUT_S) as raw:
        raw.settimeout(TLS_TIMEOUT_S)
        if protocol != "tls":
            _starttls(raw, protocol)
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise OSError("no certificate")
    cert = x509.load_der_x509_certificate(der)
    return (cert.not_valid_after_utc - now).total_seconds() / 86400


def read_certs(h: HostStatus) -> None:
    """Every live TLS port of ``h``, all at once."""
    now = dt.datetime.now(dt.timezone.utc)
    ports = [p for g in h.groups for p in TLS_PORTS.get(g, ())]

    def one(port: int, protocol: str) -> None:
        try:
            h.cert_days[str(port)] = round(cert_days_left(h.address, port, protocol, now), 1)
        except (OSError, ssl.SSLError, ValueError) as exc:
            h.cert_days[str(port)] = None
            h.cert_errors[str(port)] = str(exc) or type(exc).__name__

    with ThreadPoolExecutor(max_workers=max(1, len(ports))) as pool:
        list(pool.map(lambda pp: one(*pp), ports))


# -- judging ---------------------------------------------------------------------------


def judge(hosts: list[HostStatus], limits: site_mod.Monitoring) -> list[Finding]:
    out: list[Finding] = []
    for h in hosts:
        if not h.reachable and "failed" in h.marks:
            # Expected: its users are served elsewhere; it waits for repair or removal.
            out.append(Finding(WARNING, h.name, f"failed over and unreachable ({h.error})"))
        elif not h.reachable:
            out.append(Finding(CRITICAL, h.name, f"unreachable ({h.error})"))
        elif h.error:
            out.append(Finding(UNKNOWN, h.name, h.error))
        if h.fenced:
            out.append(
                Finding(
                    CRITICAL,
                    h.name,
                    "fenced (back from a crash, its map may be stale): run the deploy",
                )
            )
        for unit, state in sorted(h.services.items()):
            if h.fenced and unit in ("dovecot", "exim4"):
                continue  # held by the fence, said above
            if state != "active":
                out.append(Finding(CRITICAL, h.name, f"{unit} is {state}"))
        if h.reachable and h.chrony is not None and h.chrony != "Normal":
            out.append(Finding(WARNING, h.name, f"chrony not synchronised ({h.chrony})"))
        if h.queue is not None:
            level = (
                CRITICAL
                if h.queue > limits.queue_critical
                else WARNING
                if h.queue > limits.queue_warning
                else OK
            )
            if level:
                out.append(Finding(level, h.name, f"{h.queue} messages in the queue"))
        if h.queue_oldest_s:
            age = h.queue_oldest_s
            level = (
                CRITICAL
                if age > limits.queue_age_critical_s
                else WARNING
                if age > limits.queue_age_warning_s
                else OK
            )
            if level:
                out.append(Finding(level, h.name, f"oldest queued message {age // 60} min old"))
        if h.frozen and h.frozen >= limits.frozen_warning:
            out.append(Finding(WARNING, h.name, f"{h.frozen} frozen message(s) in the queue"))
        for port, days in sorted(h.cert_days.items(), key=lambda kv: int(kv[0])):
            if days is None:
                if h.reachable and not h.fenced:  # a fenced node's ports are closed
                    err = h.cert_errors.get(port, "")
                    out.append(Finding(CRITICAL, h.name, f"port {port}: no certificate ({err})"))
            elif days < limits.cert_days_critical:
                out.append(
                    Finding(
                        CRITICAL, h.name, f"port {port}: certificate expires in {days:.1f} days"
                    )
                )
            elif days < limits.cert_days_warning:
                out.append(
                    Finding(WARNING, h.name, f"port {port}: certificate expires in {days:.1f} days")
                )
    out += _map_findings(hosts)
    return out


def _expiry(days: float) -> str:
    if days < 0:
        return f"certificate expired {-days:.1f} days ago"
    return f"certificate expires in {days:.1f} days"


def _map_findings(hosts: list[HostStatus]) -> list[Finding]:
    """Every reachable mail node must hold the same backend map as the others."""
    maps = {
        h.name: h.map_id
        for h in hosts
        if "mail" in h.groups and h.reachable and "failed" not in h.marks and not h.fenced
    }
    if not maps:
        return []
    counts: dict[str | None, int] = {}
    for m in maps.values():
        counts[m] = counts.get(m, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    if len(ranked) == 1:
        return []
    common, n = ranked[0]
    tie = len(ranked) > 1 and ranked[1][1] == n
    out = []
    for name, m in sorted(maps.items()):
        if tie or m != common:
            out.append(
                Finding(
                    CRITICAL,
                    name,
                    f"backend map {m or 'unreadable'} differs from the other mail nodes' "
                    f"({common if not tie else 'no majority'}): run the deploy",
                )
            )
    return out


def overall(findings: Iterable[Finding]) -> int:
    worst = OK
    for f in findings:
        if _RANK[f.level] > _RANK[worst]:
            worst = f.level
    return worst


# -- the whole view --------------------------------------------------------------------


def collect(
    site: site_mod.Site,
    connect: dict[str, dict[str, Any]],
    ask: Callable[[HostStatus, dict[str, Any]], None] = ask_host,
) -> list[HostStatus]:
    """Ask every host of ``site`` at once (``connect``: the inventory's data per host)."""
    hosts = []
    failed = set(site.failed_nodes())
    for h in site.hosts:
        s = HostStatus(h.name, str(h.address), list(h.groups), site.fqdn(h.name))
        if h.draining:
            s.marks.append("draining")
        if h.name in failed:
            s.marks.append("failed")
        hosts.append(s)

    def one(s: HostStatus) -> None:
        started = time.monotonic()
        ask(s, connect.get(s.name, {}))
        if s.reachable:  # an unreachable host's ports would only add timeouts
            read_certs(s)
        s.seconds = round(time.monotonic() - started, 2)

    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        list(pool.map(one, hosts))
    return hosts


def report(hosts: list[HostStatus], findings: list[Finding], seconds: float) -> str:
    state = overall(findings)
    counts = {
        lvl: sum(1 for f in findings if f.level == lvl) for lvl in (CRITICAL, WARNING, UNKNOWN)
    }
    reachable = sum(h.reachable for h in hosts)
    summary = (
        f"MAILCLUSTER {STATE_NAMES[state]} - {reachable}/{len(hosts)} hosts answer, "
        f"{counts[CRITICAL]} critical, {counts[WARNING]} warning, {counts[UNKNOWN]} unknown"
    )
    sessions = sum(h.imap_sessions or 0 for h in hosts)
    queued = sum(h.queue or 0 for h in hosts)
    perf = f"imap_sessions={sessions} queue={queued} seconds={seconds:.1f}"
    lines = [f"{summary} | {perf}"]
    lines += [f.line() for f in sorted(findings, key=lambda f: (-_RANK[f.level], f.host))]
    lines.append("")
    lines.append(
        f"{'host':<12} {'ssh':<4} {'services':<9} {'imap':>5} {'queue':>6} {'oldest':>7} "
        f"{'frozen':>6} {'cert days':>9} {'map':<16} {'bans':>4} marks"
    )
    for h in hosts:
        down = [u for u, st in h.services.items() if st != "active"]
        services = ("ok" if not down else f"{len(down)} down") if h.services else "-"
        certs = [d for d in h.cert_days.values() if d is not None]
        lines.append(
            f"{h.name:<12} {'yes' if h.reachable else 'NO':<4} {services:<9} "
            f"{_n(h.imap_sessions):>5} {_n(h.queue):>6} "
            f"{(str(h.queue_oldest_s // 60) + 'm') if h.queue_oldest_s else '-':>7} "
            f"{_n(h.frozen):>6} {(f'{min(certs):.0f}' if certs else '-'):>9} "
            f"{h.map_id or '-':<16} {sum(h.bans.values()) if h.bans else '-':>4} "
            f"{','.join(h.marks)}"
        )
    return "\n".join(lines)


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def as_json(hosts: list[HostStatus], findings: list[Finding], seconds: float) -> str:
    state = overall(findings)
    return json.dumps(
        {
            "state": STATE_NAMES[state],
            "exit": state,
            "seconds": round(seconds, 2),
            "findings": [asdict(f) | {"level": STATE_NAMES[f.level]} for f in findings],
            "hosts": [asdict(h) for h in hosts],
        },
        indent=2,
    )
