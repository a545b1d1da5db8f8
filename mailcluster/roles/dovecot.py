"""The Dovecot role (group `mail`): IMAP on 143/993, the SSL/auth matrix, one backend per user."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import FileContents
from pyinfra.facts.hardware import Cpus, Memory
from pyinfra.operations import apt, files, server, systemd

from mailcluster import accounts, reloads, sizing, tlsprofile
from mailcluster.ops import managed_file, service_action
from mailcluster.roles.tls import install_tls
from mailcluster.site import Site

PACKAGES = ["dovecot-core", "dovecot-imapd"]
CONF_DIR = "/etc/dovecot/mailcluster"
PASSDB = f"{CONF_DIR}/passdb"
MASTERDB = f"{CONF_DIR}/masterdb"
OPENSSL_CONF = "/etc/dovecot/openssl.cnf"
# How long a proxying node tries to reach a user's backend before the login fails with
# [UNAVAILABLE]: 10 s outlasts a backend's reload hold (1-3 s) and stays under what mail
# clients wait (Dovecot's default, 30 s, does not; 2.3.7 retries a refused connect every
# second until then, so a dead node's users waited the whole 30 s).
PROXY_TIMEOUT_S = 10
# The account mail nodes use to open a proxied session on a user's backend (it is what
# lets CRAM-MD5 logins be proxied: the proxy never learns the user's password).
MASTER_USER = "mailcluster-proxy"


def master_secret(secrets_dir: Path) -> dict[str, str]:
    """The proxy master user's password and salt: generated once, never regenerated."""
    path = secrets_dir / "dovecot-master.json"
    if not path.exists():
        secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        value = {"password": secrets.token_urlsafe(32), "salt": secrets.token_hex(8)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(value, fh)
    return json.loads(path.read_text())


def passdb_entries(
    site: Site, node: str, master_password: str, moving: dict[str, str] | None = None
) -> list[dict[str, str]]:
    """``node``'s passdb: one line per user with an IMAP password, and for users whose
    backend is another node, where to proxy them.

    Each node gets its own file: Dovecot's proxy_maybe alone would compare the backend's
    port with the port the client used, and proxy a 143 client to its own node's 993.
    """
    out = []
    for user, hashed in sorted(accounts.read_passwords(site.secrets_dir).items()):
        backend = site.host(site.backend_of(user))
        entry = {"user": user, "hash": hashed, "backend": backend.name}
        entry["moving_from"] = (moving or {}).get(user, "")
        if backend.name != node and not entry["moving_from"]:
            entry.update(
                backend_fqdn=site.fqdn(backend.name),
                backend_ip=str(backend.address),
                master_user=MASTER_USER,
                master_password=master_password,
            )
        out.append(entry)
    return out


def passdb_context(
    site: Site, node: str, moving: dict[str, str] | None = None
) -> dict[str, object]:
    master = master_secret(site.secrets_dir)
    return {
        "node": node,
        "entries": passdb_entries(site, node, master["password"], moving),
        "proxy_timeout": PROXY_TIMEOUT_S,
    }


def live_backends(node: str, lines: list[str]) -> dict[str, str]:
    """user -> backend as ``node``'s live passdb has it (the map of the last deploy).

    Users left "moving" by a run that stopped mid-move keep the backend they moved from.
    """
    out: dict[str, str] = {}
    for line in lines:
        if line.startswith("# moving: "):
            words = line.split()  # "# moving: USER from OLD to NEW"
            out[words[2]] = words[4]
            continue
        if not line or line.startswith("#"):
            continue
        fields = line.split(":", 7)
        user, extra = fields[0], fields[7] if len(fields) == 8 else ""
        args = dict(kv.split("=", 1) for kv in extra.split() if "=" in kv)
        if "host" in args:
            out[user] = args["host"].split(".", 1)[0]
        elif "nologin" not in args:
            out.setdefault(user, node)
    return out


def moving_users(site: Site, live: dict[str, str]) -> dict[str, str]:
    """Users whose backend changes in this run (a node added or draining): user -> old."""
    users = accounts.read_passwords(site.secrets_dir)
    return {u: old for u, old in live.items() if u in users and old != site.backend_of(u)}


def drain_sessions(users: list[str], timeout_s: int = 30) -> str:
    """Shell: end ``users``' IMAP sessions on this node (their old backend) and wait until
    Dovecot reports none; fail the run, leaving them refused, if they do not go."""
    names = " ".join(users)
    pattern = "|".join(users)
    return (
        f"for i in $(seq {timeout_s}); do "
        f'for u in {names}; do doveadm kick "$u" >/dev/null 2>&1; done; '
        f"left=$(doveadm who -1 2>/dev/null | awk 'NR > 1 && $1 ~ /^({pattern})$/ {{print $1}}'"
        " | sort -u | tr '\\n' ' '); "
        '[ -z "$left" ] && exit 0; sleep 1; done; '
        f'echo "sessions of $left on this node did not end in {timeout_s}s; '
        'they stay refused here until a deploy succeeds" >&2; exit 1'
    )


@deploy("Dovecot passdb")
def push_passdb() -> None:
    """The node's passdb, replaced by rename (a login never sees a half-written file).
    Nothing to reload: Dovecot re-reads a passwd-file when its mtime changes."""
    site: Site = host.data.site
    files.directory(
        name="Dovecot's mailcluster folder", path=CONF_DIR, mode="750", user="root", group="dovecot"
    )
    # A user whose backend changes must never be open on two backends at once (Dovecot's
    # indexes on the shared home would be written by both): every node first refuses
    # them, their old backend ends their sessions, and only then do they log in anew.
    # pyinfra runs each step on all hosts before the next, so no node is a step ahead.
    moving = moving_users(site, live_backends(host.name, host.get_fact(FileContents, PASSDB) or []))
    if moving and os.environ.get("MAILCLUSTER_ROLLOUT"):
        raise DeployError(
            f"{host.name}: {len(moving)} users change backend (a mail node added or draining); "
            "that must reach every mail node at once: run the plain deploy, not a rollout"
        )
    if moving:
        managed_file(
            name="Users changing backend: refused while their sessions drain (passdb)",
            dest=PASSDB,
            template="dovecot/passdb.j2",
            context=passdb_context(site, host.name, moving),
            mode="640",
            group="dovecot",
            secret=True,
        )
        mine = sorted(u for u, old in moving.items() if old == host.name)
        if mine:
            server.shell(
                name="End their sessions on their old backend", commands=[drain_sessions(mine)]
            )
    managed_file(
        name="Users, password hashes and backends (passdb)",
        always=bool(moving),
        dest=PASSDB,
        template="dovecot/passdb.j2",
        context=passdb_context(site, host.name),
        mode="640",
        group="dovecot",
        secret=True,
        # Every line USER:{CRAM-MD5}<64 hex>:...; a malformed line locks a user out. The
        # failure names the bad lines by number only: they hold password hashes.
        validate=(
            "! grep -Evn '^(#|$|[a-z_][a-z0-9_.-]*:\\{{CRAM-MD5\\}}[0-9a-f]{{64}}:)' {path}"
            " | sed 's/:.*/: malformed line/' | grep ."
        ),
    )


def conf_context(site: Site, node: str, limits: sizing.DovecotLimits) -> dict[str, Any]:
    """What templates/dovecot/dovecot.conf.j2 is rendered with for mail node ``node``."""
    return {
        "me": site.host(node),
        "mail_nodes": site.in_group("mail"),
        "webmail_nodes": site.in_group("webmail"),
        "limits": limits,
        "tls": tlsprofile,
        "passdb": PASSDB,
        "masterdb": MASTERDB,
        "openssl_conf": OPENSSL_CONF,
        "home_filesystem": site.home_filesystem,
    }


@deploy("Dovecot (IMAP)")
def dovecot() -> None:
    site: Site = host.data.site
    me = site.host(host.name)
    mail_nodes = site.in_group("mail")
    limits = sizing.dovecot(host.get_fact(Cpus) or 1, int(host.get_fact(Memory) or 1024))
    master = master_secret(site.secrets_dir)

    apt.packages(name="Install Dovecot", packages=PACKAGES, no_recommends=True)
    tls_ops = install_tls()

    push_passdb()
    masterdb = managed_file(
        name="The proxy master user (masterdb)",
        dest=MASTERDB,
        template="dovecot/masterdb.j2",
        context={
            "master_user": MASTER_USER,
            "hash": accounts.ssha512_hash(master["password"], bytes.fromhex(master["salt"])),
            "proxies": [h.address for h in mail_nodes if h.name != me.name],
        },
        secret=True,
        mode="640",
        group="dovecot",
        notify=["dovecot.reload"],
    )
    unit = managed_file(
        name="Dovecot's file descriptor limit",
        dest="/etc/systemd/system/dovecot.service.d/mailcluster.conf",
        template="dovecot/service-override.conf.j2",
        context={"limits": limits},
        notify=["dovecot.restart"],
    )
    openssl_conf = managed_file(
        name="OpenSSL's settings for Dovecot (no renegotiation)",
        dest=OPENSSL_CONF,
        template="dovecot/openssl.cnf.j2",
        notify=["dovecot.reload"],
    )
    conf = managed_file(
        name="dovecot.conf",
        dest="/etc/dovecot/dovecot.conf",
        template="dovecot/dovecot.conf.j2",
        context=conf_context(site, me.name, limits),
        validate="doveconf -n -c {path} >/dev/null",
        notify=["dovecot.reload"],
    )
    # A restart only when a reload cannot do: a new rlimit needs a new master process.
    service_action(
        "Restart Dovecot (new limits)",
        "dovecot",
        "restart",
        [unit],
        command="systemctl daemon-reload && systemctl restart dovecot",
    )
    systemd.service(name="Run Dovecot", service="dovecot", running=True, enabled=True)
    # SIGHUP: sessions and logins in progress carry on; mailcluster-reload holds new
    # connections back and lets logins under way finish first (a login handed to an imap
    # process of the old configuration at the moment of the SIGHUP fails).
    service_action(
        "Reload Dovecot",
        "dovecot",
        "reload",
        [conf, openssl_conf, masterdb, *tls_ops],
        command=reloads.command("dovecot"),
    )
