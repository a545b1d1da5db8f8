"""The db role (group `db`, or the webmail host in small setups): PostgreSQL holding
RoundCube's database, reachable from the webmail nodes only."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.postgres import PostgresRoles
from pyinfra.operations import apt, postgres, systemd

from mailcluster import platform
from mailcluster.ops import managed_file, service_action
from mailcluster.secrets import generated_secret
from mailcluster.site import Site

DB_NAME = "roundcube"
DB_USER = "roundcube"


def db_host(site: Site) -> str:
    """The host holding the database: the `db` group's first, else the first webmail."""
    dbs = site.in_group("db") or site.in_group("webmail")
    return dbs[0].name


@deploy("PostgreSQL (RoundCube's database)")
def db() -> None:
    site: Site = host.data.site
    me = site.host(host.name)
    plat = platform.current()
    password = generated_secret(site.secrets_dir, "roundcube-db-password")

    apt.packages(name="Install PostgreSQL", packages=["postgresql"], no_recommends=True)
    confdir = f"/etc/postgresql/{plat.postgresql}/main"
    conf = managed_file(
        name="PostgreSQL listens for the webmail nodes",
        dest=f"{confdir}/conf.d/mailcluster.conf",
        template="postgresql/mailcluster.conf.j2",
        context={"address": str(me.address)},
        mode="644",
        user="postgres",
        group="postgres",
        notify=["postgresql.restart"],
    )
    hba = managed_file(
        name="Who may connect (pg_hba.conf)",
        dest=f"{confdir}/pg_hba.conf",
        template="postgresql/pg_hba.conf.j2",
        context={"db": DB_NAME, "user": DB_USER, "webmail": site.in_group("webmail")},
        mode="640",
        user="postgres",
        group="postgres",
        notify=["postgresql.reload"],
    )
    # listen_addresses needs a restart; pg_hba.conf only a reload.
    service_action("Restart PostgreSQL (listeners)", "postgresql", "restart", [conf])
    service_action("Reload PostgreSQL (pg_hba)", "postgresql", "reload", [hba])
    systemd.service(name="Run PostgreSQL", service="postgresql", running=True, enabled=True)
    # The password is set when the role is made; it never changes (generated once), and
    # pyinfra would otherwise re-send it, reporting a change on every run.
    roles = (
        host.get_fact(PostgresRoles, psql_user="postgres", _sudo=True, _sudo_user="postgres") or {}
    )
    postgres.role(
        name="RoundCube's database role",
        role=DB_USER,
        password=None if DB_USER in roles else password,
        login=True,
        psql_user="postgres",
        _sudo=True,
        _sudo_user="postgres",
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
