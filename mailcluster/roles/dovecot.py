"""The Dovecot role (group `mail`): IMAP on 143/993, the SSL/auth matrix, one backend per user.

This module installs and runs the service and puts the role's jobs in order; each job
has its module:

+ roles/dovecot_passdb.py: each node's passdb (users, backends, proxying), and moves;
+ roles/dovecot_master.py: the proxy master user's secret and the masterdb;
+ roles/dovecot_conf.py: dovecot.conf with its sizing, the fd limit, openssl.cnf;
+ roles/dovecot_reload.py: what restarts Dovecot and what reloads it.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, systemd

from mailcluster.ops import managed_file
from mailcluster.passdb import MASTER_USER, PROXY_TIMEOUT_S
from mailcluster.roles import dovecot_reload
from mailcluster.roles.dovecot_conf import (
    CONF_DIR,
    MASTERDB,
    OPENSSL_CONF,
    PASSDB,
    conf_context,
    install_conf,
)
from mailcluster.roles.dovecot_master import install_masterdb, master_secret
from mailcluster.roles.dovecot_passdb import (
    drain_sessions,
    live_backends,
    moving_users,
    passdb_context,
    push_passdb,
)
from mailcluster.roles.tls import install_tls
from mailcluster.site import Site

# The names other code imports from here, wherever their job's module now is.
__all__ = [
    "CONF_DIR",
    "MASTERDB",
    "MASTER_USER",
    "OPENSSL_CONF",
    "PACKAGES",
    "PASSDB",
    "PROXY_TIMEOUT_S",
    "conf_context",
    "dovecot",
    "drain_sessions",
    "live_backends",
    "master_secret",
    "moving_users",
    "passdb_context",
    "push_passdb",
]

PACKAGES = ["dovecot-core", "dovecot-imapd"]


@deploy("Dovecot (IMAP)")
def dovecot() -> None:
    site: Site = host.data.site

    # Before the package: its install starts and restarts Dovecot (the stop limit's why
    # is in the template).
    stop_limit = managed_file(
        name="Dovecot's stop time limit (before the package starts it)",
        dest="/etc/systemd/system/dovecot.service.d/mailcluster-stop.conf",
        template="dovecot/service-stop.conf.j2",
    )
    systemd.daemon_reload(name="systemd reads Dovecot's stop limit", _if=stop_limit.did_change)
    apt.packages(name="Install Dovecot", packages=PACKAGES, no_recommends=True)
    tls_ops = install_tls()

    # The passdb first (a new node's Dovecot must not serve without it), but users who
    # change backend move last: their logins wait during the move, and a reload would
    # end the waiting ones.
    push_passdb(moves=False)
    masterdb = install_masterdb(site, host.name)
    conf = install_conf(site, host.name)
    dovecot_reload.restart([conf.unit])
    systemd.service(name="Run Dovecot", service="dovecot", running=True, enabled=True)
    dovecot_reload.reload([conf.conf, conf.openssl_conf, masterdb, *tls_ops])
    push_passdb()
