"""Process and client limits computed from a host's vCPUs and memory (never constants).

Each function returns the settings with the arithmetic behind them; the templates
print that arithmetic next to each setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# An idle IMAP session is one `imap` process: about 1 MiB of private memory (the rest
# is shared library pages); measured with bench/imap_sessions.py, see BENCHMARKS.md.
IMAP_SESSION_MIB = 1
# Half the memory for IMAP sessions; the rest is page cache (Maildir), Exim, the OS.
IMAP_MEMORY_SHARE = 0.5
# Floor for tiny test machines: a mail node must still take a lecture hall's worth.
IMAP_MIN_SESSIONS = 1000
# Memory an imap-login process holds per proxied session: measured 0.31-0.33 MiB, with margin.
LOGIN_PROXY_MIB = 0.5


@dataclass(frozen=True)
class DovecotLimits:
    imap_process_limit: int
    login_processes: int
    login_client_limit: int
    default_client_limit: int
    nofile: int
    login_vsz_mb: int
    why: dict[str, str]


def dovecot(vcpus: int, memory_mb: int) -> DovecotLimits:
    vcpus = max(1, vcpus)
    by_memory = int(memory_mb * IMAP_MEMORY_SHARE / IMAP_SESSION_MIB)
    imap = max(IMAP_MIN_SESSIONS, by_memory)
    # imap-login in high-performance mode: one process per vCPU, each holding many
    # clients. A proxied session lives entirely in imap-login, so together they must
    # hold every session the node accepts.
    login_procs = vcpus
    login_clients = math.ceil(imap / login_procs)
    # auth, anvil, stats... each take a connection per login/imap process and client.
    default_clients = imap + login_procs * 2 + 100
    # Two descriptors per proxied client (client + backend), plus the process's own.
    nofile = max(65536, 2 * login_clients + 1024, imap + 1024)
    # A proxied session costs its imap-login process about 0.3 MiB (BENCHMARKS.md);
    # the address space must hold a full process, or it dies at vsz_limit.
    login_vsz = max(1024, 256 + math.ceil(login_clients * LOGIN_PROXY_MIB))
    why = {
        "imap_process_limit": (
            f"{memory_mb} MB x {IMAP_MEMORY_SHARE} / {IMAP_SESSION_MIB} MiB per session "
            f"= {by_memory} (floor {IMAP_MIN_SESSIONS}); stock 100 refuses the 101st login"
        ),
        "login_processes": f"one imap-login per vCPU ({vcpus})",
        "login_client_limit": f"{imap} sessions / {login_procs} login processes",
        "default_client_limit": f"{imap} sessions + 2 x {login_procs} login + 100 spare",
        "nofile": f"2 fds x {login_clients} proxied clients + 1024, at least 65536",
        "login_vsz_mb": (
            f"256 MiB + {login_clients} clients x {LOGIN_PROXY_MIB} MiB per proxied session, "
            "at least 1 GiB"
        ),
    }
    return DovecotLimits(imap, login_procs, login_clients, default_clients, nofile, login_vsz, why)


@dataclass(frozen=True)
class EximLimits:
    vcpus: int
    memory_mb: int
    smtp_accept_max: int
    smtp_accept_max_per_host: int
    smtp_accept_queue_per_connection: int
    queue_run_max: int
    remote_max_parallel: int
    why: dict[str, str]


# One SMTP connection is one forked exim process: about 4 MiB; an eighth of memory
# for them (Dovecot's sessions have half).
EXIM_CONNECTION_MIB = 4
EXIM_MEMORY_SHARE = 1 / 8


def exim(vcpus: int, memory_mb: int) -> EximLimits:
    vcpus = max(1, vcpus)
    accept = max(50, min(2000, int(memory_mb * EXIM_MEMORY_SHARE / EXIM_CONNECTION_MIB)))
    per_host = max(10, accept // 10)
    runners = 2 * vcpus
    parallel = 2 * vcpus
    why = {
        "smtp_accept_max": (
            f"{memory_mb} MB / 8 / {EXIM_CONNECTION_MIB} MiB per connection = "
            f"{int(memory_mb * EXIM_MEMORY_SHARE / EXIM_CONNECTION_MIB)} (50..2000; stock 20)"
        ),
        "smtp_accept_max_per_host": f"a tenth of {accept}: one client cannot take them all",
        "smtp_accept_queue_per_connection": (
            "stock 10 left the 11th message of a connection queued until the next queue "
            "run; 100 keeps a busy sender's mail moving, smtp_accept_max bounds the processes"
        ),
        "queue_run_max": f"2 x {vcpus} vCPUs (deliveries wait on disk and network)",
        "remote_max_parallel": f"2 x {vcpus} vCPUs parallel remote deliveries per message",
    }
    return EximLimits(vcpus, memory_mb, accept, per_host, 100, runners, parallel, why)


@dataclass(frozen=True)
class PhpFpmLimits:
    max_children: int
    start_servers: int
    min_spare: int
    max_spare: int
    why: dict[str, str]


# A RoundCube request in php-fpm: about 40 MiB (memory_limit is 128M, typical use 20-50).
PHP_CHILD_MIB = 40
PHP_MEMORY_SHARE = 0.5  # half the webmail host's memory for PHP, the rest nginx, cache, OS


def php_fpm(vcpus: int, memory_mb: int) -> PhpFpmLimits:
    vcpus = max(1, vcpus)
    by_memory = int(memory_mb * PHP_MEMORY_SHARE / PHP_CHILD_MIB)
    children = max(5, by_memory)
    start = min(children, 2 * vcpus)
    min_spare = min(children, vcpus)
    max_spare = min(children, 4 * vcpus)
    why = {
        "max_children": (
            f"{memory_mb} MB x {PHP_MEMORY_SHARE} / {PHP_CHILD_MIB} MiB per child = {by_memory} "
            "(at least 5); past it, requests wait: "
            "'server reached pm.max_children setting'"
        ),
        "spares": f"{vcpus} vCPUs: start 2x, keep 1x..4x idle",
    }
    return PhpFpmLimits(children, start, min_spare, max_spare, why)
