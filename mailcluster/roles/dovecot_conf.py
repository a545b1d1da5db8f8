"""Dovecot's configuration (part of the Dovecot role, roles/dovecot.py): dovecot.conf,
sized from the host's vCPUs and memory, the file descriptor limit that sizing needs (a
systemd override), and OpenSSL's settings for Dovecot. Also where Dovecot's files are:
dovecot.conf names them."""

from __future__ import annotations

from typing import Any, NamedTuple

from pyinfra import host
from pyinfra.api.operation import OperationMeta
from pyinfra.facts.hardware import Cpus, Memory

from mailcluster import sizing, tlsprofile
from mailcluster.ops import managed_file
from mailcluster.site import Site

CONF_DIR = "/etc/dovecot/mailcluster"
PASSDB = f"{CONF_DIR}/passdb"
MASTERDB = f"{CONF_DIR}/masterdb"
OPENSSL_CONF = "/etc/dovecot/openssl.cnf"


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


class ConfOps(NamedTuple):
    unit: OperationMeta  # a change needs a restart (a new rlimit needs a new master)
    openssl_conf: OperationMeta  # these two a reload
    conf: OperationMeta


def install_conf(site: Site, node: str) -> ConfOps:
    limits = sizing.dovecot(host.get_fact(Cpus) or 1, int(host.get_fact(Memory) or 1024))
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
        context=conf_context(site, node, limits),
        validate="doveconf -n -c {path} >/dev/null",
        notify=["dovecot.reload"],
    )
    return ConfOps(unit, openssl_conf, conf)
