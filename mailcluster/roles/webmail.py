"""The webmail role (group `webmail`): RoundCube from the distribution, behind nginx and
php-fpm, HTTPS only, talking to the mail nodes over verified TLS, its sessions in the
shared PostgreSQL database so any webmail node serves any logged-in user."""

from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import FactBase, StringCommand, deploy, operation
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.hardware import Cpus, Memory
from pyinfra.operations import apt, files, server, systemd

from mailcluster import platform, sizing, tlsprofile, webmail_security
from mailcluster.ops import managed_file, run_service, service_action
from mailcluster.roles.db import DB_NAME, DB_USER, db_host
from mailcluster.roles.tls import install_tls
from mailcluster.secrets import generated_secret
from mailcluster.site import Site

PREFERENCES = "/var/cache/mailcluster/roundcube.debconf"
POOL_SOCKET = "/run/php/roundcube.sock"
SITE_FILE = "/etc/nginx/sites-available/mailcluster-webmail"
SQL_DIR = "/usr/share/roundcube/SQL"
# Ours, next to the package's plugin links (RoundCube 1.4 to 1.6 load plugins from here).
PLUGIN_DIR = "/var/lib/roundcube/plugins/mailcluster"
# nginx's answer while php-fpm is stopped for a maintenance window (templates/nginx).
MAINTENANCE_ROOT = "/usr/share/mailcluster/webmail"
# nginx and PHP accept requests up to 4 attachments' worth, so that an oversized file is
# refused by RoundCube (naming the attachment limit), never by nginx (a bare 413).
BODY_FACTOR = 4


def packages(php: str) -> list[str]:
    """What the role installs, for PHP version ``php`` (mailcluster.platform.PHP)."""
    return [
        f"php{php}-fpm",
        # `php -l` validates config.inc.php before it goes live (RoundCube 1.4's package
        # does not pull the command-line PHP in).
        f"php{php}-cli",
        f"php{php}-pgsql",
        "nginx",
        "postgresql-client",
        "roundcube-core",
        "roundcube-pgsql",
    ]


class RoundcubeSchema(FactBase[dict[str, str]]):
    """The schema version in RoundCube's database, and the newest the package ships."""

    def command(self, dsn_host: str) -> str:
        return (
            f"echo db=$(psql -h {dsn_host} -U {DB_USER} -d {DB_NAME} -tAc "
            "\"select value from system where name='roundcube-version'\" 2>/dev/null); "
            f"echo pkg=$(ls {SQL_DIR}/postgres/ 2>/dev/null | sort | tail -1 | cut -d. -f1)"
        )

    def process(self, output: list[str]) -> dict[str, str]:
        return dict(line.split("=", 1) for line in output if "=" in line)


class RoundcubeCandidate(FactBase[str]):
    """The roundcube-core version apt would install now ("" when apt knows none). A fresh
    host has no package lists yet: they are fetched first (through the site's proxy)."""

    def command(self, proxy: str | None) -> str:
        opt = f"-o Acquire::http::Proxy={proxy} " if proxy else ""
        return (
            "ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || "
            f"apt-get {opt}update -qq >/dev/null 2>&1; "
            "apt-cache policy roundcube-core 2>/dev/null | sed -n 's/^ *Candidate: *//p'"
        )

    def process(self, output: list[str]) -> str:
        text = output[0].strip() if output else ""
        return "" if text == "(none)" else text


def check_roundcube(site: Site, plat: platform.Platform) -> None:
    """Stop the whole run, before any host is touched, if this host would get a RoundCube
    with a known code-execution hole (mailcluster/webmail_security.py)."""
    candidate = host.get_fact(RoundcubeCandidate, proxy=site.apt_proxy)
    if not candidate:
        raise DeployError(
            f"{host.name}: apt offers no roundcube-core (is {plat.distro}'s "
            f"{'universe' if plat.distro == 'Ubuntu' else 'main'} component enabled?)"
        )
    holes = webmail_security.unfixed(plat.distro, plat.major, candidate)
    if not holes:
        return
    message = webmail_security.refusal(host.name, plat.distro, plat.major, candidate, holes)
    if not site.webmail.allow_known_vulnerable_roundcube:
        raise DeployError(
            f"refusing to install RoundCube; no operation ran on any host. {message}. "
            f"(A throw-away test lab may set {webmail_security.OVERRIDE}.)"
        )
    logger.warning(
        "INSTALLING A KNOWN-VULNERABLE ROUNDCUBE (site %s is set): %s",
        webmail_security.OVERRIDE,
        message,
    )


@operation()
def roundcube_schema(dsn_host: str):
    """Create RoundCube's schema once; upgrade it when the package ships a newer one."""
    state = host.get_fact(RoundcubeSchema, dsn_host=dsn_host)
    have, ships = state.get("db", ""), state.get("pkg", "")
    psql = f"psql -h {dsn_host} -U {DB_USER} -d {DB_NAME} -v ON_ERROR_STOP=1 -q"
    if not have:
        yield StringCommand(f"{psql} -f {SQL_DIR}/postgres.initial.sql")
    elif ships and ships > have:
        yield StringCommand(f"{SQL_DIR}/../bin/updatedb.sh --package=roundcube --dir={SQL_DIR}")


def schema_node(site: Site) -> str:
    """The webmail node that creates or upgrades RoundCube's schema: the first; during an
    OS upgrade, the newest webmail node in the site (its RoundCube is the newer one: a
    1.6 node must not serve from a 1.4 schema until the old node is gone)."""
    names = [h.name for h in site.in_group("webmail")]
    plan = site.upgrade_plan()
    if plan is not None:
        new = [n for _, n in plan.host_pairs() if n in names]
        if new:
            return new[-1]
    return names[0]


def rekey_where(mail_host: str) -> str:
    """The users RoundCube would no longer find: keyed by another IMAP host name (a mail
    node's, from before the service name was used), the newest row of each user, when
    none is keyed by the service name yet. Older rows of the same user stay as they are
    (their data kept, unused)."""
    m = mail_host.replace("'", "''")
    return (
        f"u.mail_host <> '{m}' AND NOT EXISTS (SELECT 1 FROM users x WHERE "
        f"x.username = u.username AND x.mail_host = '{m}') AND u.user_id = (SELECT "
        "y.user_id FROM users y WHERE y.username = u.username ORDER BY y.last_login DESC "
        "NULLS LAST, y.user_id DESC LIMIT 1)"
    )


class RoundcubeUsersToRekey(FactBase[int]):
    """How many of RoundCube's users :func:`rekey_where` selects (0 without a schema)."""

    def command(self, dsn_host: str, mail_host: str) -> str:
        query = f"SELECT count(*) FROM users u WHERE {rekey_where(mail_host)}"
        return (
            f"psql -h {dsn_host} -U {DB_USER} -d {DB_NAME} -tAc {shlex.quote(query)} "
            "2>/dev/null || echo 0"
        )

    def process(self, output: list[str]) -> int:
        return int(output[0]) if output and output[0].strip().isdigit() else 0


@operation()
def roundcube_mail_host(dsn_host: str, mail_host: str):
    """RoundCube finds a user by username and IMAP host name. It used to reach a mail node
    by the node's own name, so a user whose webmail moved to another node (a node
    replaced, an OS upgrade) came back to an empty address book. Their rows are keyed by
    the service name once, keeping their data."""
    if host.get_fact(RoundcubeUsersToRekey, dsn_host=dsn_host, mail_host=mail_host):
        update = f"UPDATE users u SET mail_host = '{mail_host}' WHERE {rekey_where(mail_host)}"
        yield StringCommand(
            f"psql -h {dsn_host} -U {DB_USER} -d {DB_NAME} -v ON_ERROR_STOP=1 -qc "
            f"{shlex.quote(update)}"
        )


@deploy("RoundCube webmail")
def webmail() -> None:
    site: Site = host.data.site
    me = site.host(host.name)
    plat = platform.current()
    php = plat.php
    dbh = db_host(site)
    dsn_host = "127.0.0.1" if dbh == me.name else site.fqdn(dbh)
    db_password = generated_secret(site.secrets_dir, "roundcube-db-password")
    des_key = generated_secret(site.secrets_dir, "roundcube-des-key", length=24)
    limits = sizing.php_fpm(host.get_fact(Cpus) or 1, int(host.get_fact(Memory) or 1024))
    attachment = site.attachment_max_bytes

    check_roundcube(site, plat)

    # The database is ours to set up: no dbconfig-common questions at install.
    prefs = managed_file(
        name="RoundCube's install answers (debconf)",
        dest=PREFERENCES,
        template="roundcube/debconf.j2",
    )
    server.shell(
        name="Load RoundCube's install answers",
        commands=[f"grep -v '^#' {PREFERENCES} | debconf-set-selections"],
        _if=prefs.did_change,
    )
    apt.packages(
        name="Install nginx, php-fpm and RoundCube",
        packages=packages(php),
        no_recommends=True,
    )
    tls_ops = install_tls()

    pgpass = managed_file(
        name="Database password for root's psql (schema setup)",
        dest="/root/.pgpass",
        template="roundcube/pgpass.j2",
        context={"host": dsn_host, "db": DB_NAME, "user": DB_USER, "password": db_password},
        mode="600",
        banner=False,  # one line per entry; libpq's format has no place for it
        secret=True,
    )
    del pgpass

    config = managed_file(
        name="RoundCube configuration",
        dest="/etc/roundcube/config.inc.php",
        secret=True,  # the database password and des_key
        template="roundcube/config.inc.php.j2",
        context={
            "dsn": f"pgsql://{DB_USER}:{db_password}@{dsn_host}/{DB_NAME}",
            "des_key": des_key,
            # The service names, which /etc/hosts points at this host's mail node
            # (roles/base.py service_aliases): RoundCube's users are keyed by this name.
            "imap": f"ssl://{site.service_names['imap']}:993",
            "smtp": f"tls://{site.service_names['smtp']}:587",
            "legacy": plat.roundcube_legacy_options,
            "domain": site.domain,
            "ca_bundle": tlsprofile.SYSTEM_BUNDLE,
            "attachment": attachment,
        },
        validate="php -l {path} >/dev/null",
        banner=False,
        mode="640",
        group="www-data",
        notify=[f"php{php}-fpm.reload"],
    )
    # After the configuration: updatedb.sh (a schema upgrade, e.g. RoundCube 1.4 -> 1.6 on
    # a new host during an OS upgrade) reads the database from config.inc.php, which on a
    # fresh host is still the package's (localhost, as root: refused).
    if me.name == schema_node(site):  # one node creates or upgrades the shared schema
        roundcube_schema(
            name="RoundCube's schema (created once, upgraded in place)", dsn_host=dsn_host
        )
        roundcube_mail_host(
            name="RoundCube's users keyed by the IMAP service name",
            dsn_host=dsn_host,
            mail_host=str(site.service_names["imap"]),
        )
    files.directory(name="RoundCube's mailcluster plugin folder", path=PLUGIN_DIR, mode="755")
    plugin = managed_file(
        name="RoundCube plugin: the browser's address to Dovecot, no retry of a wrong password",
        dest=f"{PLUGIN_DIR}/mailcluster.php",
        template="roundcube/mailcluster_plugin.php.j2",
        validate="php -l {path} >/dev/null",
        banner=False,
        notify=[f"php{php}-fpm.reload"],
    )
    pool = managed_file(
        name="php-fpm pool for RoundCube",
        dest=f"/etc/php/{php}/fpm/pool.d/roundcube.conf",
        template="php/roundcube-pool.conf.j2",
        context={
            "limits": limits,
            "socket": POOL_SOCKET,
            "attachment": attachment,
            "post_max": attachment * BODY_FACTOR,
        },
        comment=";",
        validate=(
            "printf '[global]\\nerror_log=/tmp/mailcluster-fpm-test.log\\ninclude=%s\\n' "
            f"{{path}} > /tmp/mailcluster-fpm-test.conf && php-fpm{php} -t "
            "-y /tmp/mailcluster-fpm-test.conf"
        ),
        notify=[f"php{php}-fpm.reload"],
    )
    files.directory(name="The webmail's maintenance page folder", path=MAINTENANCE_ROOT, mode="755")
    managed_file(
        name="The webmail's maintenance page (php-fpm stopped)",
        dest=f"{MAINTENANCE_ROOT}/mailcluster-maintenance.html",
        template="nginx/mailcluster-maintenance.html.j2",
        banner=False,
    )
    files.link(name="No nginx default site", path="/etc/nginx/sites-enabled/default", present=False)
    site_conf = managed_file(
        name="nginx site: RoundCube over HTTPS",
        dest=SITE_FILE,
        template="nginx/webmail.conf.j2",
        context={
            "names": [site.service_names["webmail"], site.fqdn(me.name), str(me.address)],
            "tls": tlsprofile,
            "docroot": plat.roundcube_docroot,
            "socket": POOL_SOCKET,
            # nginx lets more through than PHP accepts, so that RoundCube, not nginx,
            # answers an oversized upload (with its own readable message, not a bare 413).
            "body_max": attachment * BODY_FACTOR,
            "maintenance_root": MAINTENANCE_ROOT,
        },
        # The candidate alone in a minimal main config, next to nginx.conf (relative
        # includes such as snippets/ resolve from there).
        validate=(
            "printf 'events {{}}\\nhttp {{ include mime.types; include %s; }}\\n' {path} "
            "> /etc/nginx/mailcluster-test.conf && "
            "nginx -t -q -c /etc/nginx/mailcluster-test.conf; "
            "rc=$?; rm -f /etc/nginx/mailcluster-test.conf; exit $rc"
        ),
        notify=["nginx.reload"],
    )
    enabled = files.link(
        name="Enable the webmail site",
        path="/etc/nginx/sites-enabled/mailcluster-webmail",
        target=SITE_FILE,
    )

    run_service("Run php-fpm", f"php{php}-fpm")
    service_action("Reload php-fpm", f"php{php}-fpm", "reload", [pool, config, plugin])
    systemd.service(name="Run nginx", service="nginx", running=True, enabled=True)
    service_action("Reload nginx", "nginx", "reload", [site_conf, enabled, *tls_ops])
