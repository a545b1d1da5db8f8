"""The db role (group `db`, or the webmail host in small setups): PostgreSQL holding
RoundCube's database, reachable from the webmail nodes only."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.postgres import PostgresRoles
from pyinfra.operations import apt, postgres, server, systemd
from pyinfra.operations.util import any_changed

from mailcluster import platform
from mailcluster.ops import managed_file, service_action
from mailcluster.secrets import generated_secret
from mailcluster.site import Site

DB_NAME = "roundcube"
DB_USER = "roundcube"
# The role's password for psql to read: on a command line it would reach sudo's log (the
# journal) whole, as pyinfra's postgres.role put it there.
PASSWORD_FILE = "/var/lib/postgresql/mailcluster-roundcube-password"


def db_host(site: Site) -> str:
    """The host holding the database: the `db` group's first, else the first webmail;
    during an OS upgrade that has copied the database to a new host, that host
    (mailcluster/upgrade.py: the old one stays listed until it is removed)."""
    dbs = site.in_group("db") or site.in_group("webmail")
    plan = site.upgrade_plan()
    if plan is not None and plan.db_to and any(h.name == plan.db_to for h in dbs):
        return str(plan.db_to)
    return dbs[0].name


@deploy("PostgreSQL (RoundCube's database)")
def db() -> None:
    site: Site = host.data.site
    me = site.host(host.name)
    plat = platform.current()
    password = generated_secret(site.secrets_dir, "roundcube-db-password")

    apt.packages(name="Install PostgreSQL", packages=["postgresql"], no_recommends=True)
    confdir = f"/etc/postgresql/{plat.postgresql}/main"
    # The cluster's own unit, not the postgresql.service wrapper: the wrapper runs no
    # process (ExecStart=/bin/true), and on Ubuntu 24.04 in the lab its reload failed
    # ("Failed to attach to cgroup ... No such file or directory") right after the first
    # start. The wrapper propagates reloads and restarts to this unit anyway.
    cluster = f"postgresql@{plat.postgresql}-main"
    conf = managed_file(
        name="PostgreSQL listens for the webmail nodes",
        dest=f"{confdir}/conf.d/mailcluster.conf",
        template="postgresql/mailcluster.conf.j2",
        context={"address": str(me.address)},
        mode="644",
        user="postgres",
        group="postgres",
        notify=[f"{cluster}.restart"],
    )
    hba = managed_file(
        name="Who may connect (pg_hba.conf)",
        dest=f"{confdir}/pg_hba.conf",
        template="postgresql/pg_hba.conf.j2",
        context={"db": DB_NAME, "user": DB_USER, "webmail": site.in_group("webmail")},
        mode="640",
        user="postgres",
        group="postgres",
        notify=[f"{cluster}.reload"],
    )
    # listen_addresses needs a restart; pg_hba.conf only a reload.
    service_action("Restart PostgreSQL (listeners)", cluster, "restart", [conf])
    service_action("Reload PostgreSQL (pg_hba)", cluster, "reload", [hba])
    systemd.service(name="Run PostgreSQL", service="postgresql", running=True, enabled=True)
    roles = (
        host.get_fact(PostgresRoles, psql_user="postgres", _sudo=True, _sudo_user="postgres") or {}
    )
    password_file = managed_file(
        name="RoundCube's database password, for psql (0600 postgres)",
        dest=PASSWORD_FILE,
        content=password + "\n",
        mode="600",
        user="postgres",
        group="postgres",
        secret=True,
    )
    postgres.role(
        name="RoundCube's database role",
        role=DB_USER,
        login=True,
        psql_user="postgres",
        _sudo=True,
        _sudo_user="postgres",
    )
    # Set when the role is made or the file changes (the password is generated once and
    # never changes). psql reads it from the file into a variable, so no command line,
    # process title or log holds it.
    server.shell(
        name="RoundCube's database password (from that file)",
        commands=[
            f"echo \"ALTER ROLE {DB_USER} PASSWORD :'pw';\" | "
            f'psql -v ON_ERROR_STOP=1 -q -v pw="$(cat {PASSWORD_FILE})"'
        ],
        _sudo=True,
        _sudo_user="postgres",
        _if=[] if DB_USER not in roles else [password_file.did_change],
    )
    postgres.database(
        name="RoundCube's database",
        database=DB_NAME,
        owner=DB_USER,
        encoding="UTF8",
        psql_user="postgres",
        _sudo=True,
        _sudo_user="postgres",
    )
    backups(site)


BACKUP_SCRIPT = "/usr/local/sbin/mailcluster-roundcube-backup"
RESTORE_SCRIPT = "/usr/local/sbin/mailcluster-roundcube-restore"
BACKUP_UNIT = "mailcluster-roundcube-backup"


def backups(site: Site) -> None:
    """A daily pg_dump of RoundCube's database to the site's backup directory, old dumps
    removed after ``backups.keep_days``, and the restore script the RUNBOOK uses."""
    context = {"backups": site.backups, "db": DB_NAME, "user": DB_USER}
    managed_file(
        name="mailcluster-roundcube-backup",
        dest=BACKUP_SCRIPT,
        template="postgresql/roundcube-backup.sh.j2",
        context=context,
        mode="755",
        validate="sh -n {path}",
    )
    managed_file(
        name="mailcluster-roundcube-restore",
        dest=RESTORE_SCRIPT,
        template="postgresql/roundcube-restore.sh.j2",
        context=context,
        mode="755",
        validate="sh -n {path}",
    )
    units = [
        managed_file(
            name=f"{BACKUP_UNIT}.{kind}",
            dest=f"/etc/systemd/system/{BACKUP_UNIT}.{kind}",
            template=f"postgresql/{BACKUP_UNIT}.{kind}.j2",
            context=context,
        )
        for kind in ("service", "timer")
    ]
    systemd.daemon_reload(name="systemd reads the backup units", _if=any_changed(*units))
    systemd.service(
        name="Daily dump of RoundCube's database (timer)",
        service=f"{BACKUP_UNIT}.timer",
        running=True,
        enabled=True,
    )
