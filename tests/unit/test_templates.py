"""Templates render strictly: every template renders with its role's context, a missing
value is an error (never an empty string in a live config), and each carries the banner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest

from mailcluster import passdb, reloads, site, sizing, templating, tlsprofile
from mailcluster.roles import fail2ban
from tests.conftest import REPO

SITE = site.load(REPO / "tests" / "fixtures" / "sites" / "loopback.yaml")

_LIMITS = sizing.dovecot(4, 8192)
_PASSDB: dict[str, Any] = {
    # As mailcluster/passdb.py's Entry has them (rendered from the model in the deploy).
    "node": "mail01",
    "entries": [
        passdb.Entry("alice", "{CRAM-MD5}" + "0" * 64, "mail01"),
        passdb.Entry(
            "bob",
            "{CRAM-MD5}" + "1" * 64,
            "mail02",
            backend_fqdn="mail02.example.test",
            backend_ip="127.0.0.3",
            master_user="mailcluster-proxy",
            master_password="m",
        ),
        passdb.Entry(
            "carol",
            "{CRAM-MD5}" + "2" * 64,
            "mail03",
            moving_from="mail02",
            backend_fqdn="mail03.example.test",
            backend_ip="127.0.0.4",
            master_user="mailcluster-proxy",
            master_password="m",
        ),
    ],
    "proxy_timeout": 20,
    "hold_until": lambda: 1796000000,
}
FENCE_CONTEXT = {"script": "/s", "up_marker": "/var/u", "fenced_flag": "/run/f"}
BACKUP_CONTEXT = {"backups": SITE.backups, "db": "roundcube", "user": "roundcube"}
DOVECOT_CONTEXTS: dict[str, dict[str, Any]] = {
    "dovecot/dovecot.conf.j2": {
        "me": SITE.hosts[0],
        "mail_nodes": SITE.in_group("mail"),
        "webmail_nodes": SITE.in_group("webmail"),
        "limits": _LIMITS,
        "tls": tlsprofile,
        "passdb": "/p",
        "masterdb": "/m",
        "openssl_conf": "/etc/dovecot/openssl.cnf",
        "home_filesystem": "nfs",
    },
    "dovecot/passdb.j2": _PASSDB,
    "dovecot/masterdb.j2": {
        "master_user": "mailcluster-proxy",
        "hash": "{SSHA512}x",
        "proxies": ["10.0.0.12"],
    },
    "dovecot/service-override.conf.j2": {"limits": _LIMITS},
    "dovecot/openssl.cnf.j2": {},
    "roundcube/mailcluster_plugin.php.j2": {},
}

EXIM_CONTEXTS: dict[str, dict[str, Any]] = {
    "exim4/exim4.conf.j2": {
        "me": SITE.hosts[0],
        "fqdn": "mail01.example.test",
        "domain": SITE.domain,
        "mail_nodes": SITE.in_group("mail"),
        "smarthost": "127.0.0.1::25",
        "tls": tlsprofile,
        "limits": sizing.exim(4, 8192),
        "auth_socket": "/run/dovecot/auth-exim",
        "sending": SITE.sending,
    },
    "exim4/backends.j2": {"node": "mail01", "rows": [("alice", "local"), ("bob", "mail02.x")]},
    "exim4/default.j2": {"queue_interval": "2m"},
}

WEBMAIL_CONTEXTS: dict[str, dict[str, Any]] = {
    "postgresql/mailcluster.conf.j2": {"address": "127.0.0.4"},
    "fence/mailcluster-fence.sh.j2": FENCE_CONTEXT,
    "fence/mailcluster-fence.service.j2": FENCE_CONTEXT,
    "fence/fenced.conf.j2": FENCE_CONTEXT,
    "postgresql/roundcube-backup.sh.j2": BACKUP_CONTEXT,
    "postgresql/roundcube-restore.sh.j2": BACKUP_CONTEXT,
    "postgresql/mailcluster-roundcube-backup.service.j2": BACKUP_CONTEXT,
    "postgresql/mailcluster-roundcube-backup.timer.j2": BACKUP_CONTEXT,
    "postgresql/pg_hba.conf.j2": {
        "db": "roundcube",
        "user": "roundcube",
        "webmail": SITE.in_group("webmail"),
    },
    "roundcube/debconf.j2": {},
    "roundcube/pgpass.j2": {"host": "127.0.0.1", "db": "d", "user": "u", "password": "p"},
    "roundcube/config.inc.php.j2": {
        "dsn": "pgsql://u:p@127.0.0.1/d",
        "des_key": "k" * 24,
        "imap": "ssl://mail01.example.test:993",
        "smtp": "tls://mail01.example.test:587",
        "legacy": False,
        "domain": SITE.domain,
        "ca_bundle": tlsprofile.SYSTEM_BUNDLE,
        "attachment": 2097152,
    },
    "php/roundcube-pool.conf.j2": {
        "limits": sizing.php_fpm(4, 8192),
        "socket": "/run/php/roundcube.sock",
        "attachment": 2097152,
        "post_max": 8388608,
    },
    "nginx/webmail.conf.j2": {
        "names": ["webmail.example.test"],
        "tls": tlsprofile,
        "docroot": "/var/lib/roundcube/public_html",
        "socket": "/run/php/roundcube.sock",
        "body_max": 8388608,
        "maintenance_root": "/usr/share/mailcluster/webmail",
    },
    "nginx/mailcluster-maintenance.html.j2": {},
    "dovecot/service-stop.conf.j2": {},
}

# The context each template gets from its role (kept in step with mailcluster/roles/).
CONTEXTS: dict[str, dict[str, Any]] = {
    "apt/01mailcluster-proxy.j2": {"proxy": "http://10.77.0.1:3150"},
    "apt/20auto-upgrades.j2": {"enabled": True},
    "base/hostname.j2": {"name": "mail01"},
    "base/hosts.j2": {
        "me": SITE.hosts[0],
        "hosts": SITE.hosts,
        "domain": SITE.domain,
        "services": ("10.0.0.2", ["imap.example.test", "smtp.example.test"]),
    },
    "base/timezone.j2": {"timezone": "Asia/Tokyo"},
    "chrony/chrony.conf.j2": {"servers": SITE.ntp_servers},
    "chrony/default.j2": {"in_container": False, "seccomp": "-F 1"},
    "chrony/unit-override.conf.j2": {"in_container": True},
    "ssh/10-mailcluster.conf.j2": {},
    "base/reload.sh.j2": reloads.script_context(),
    "fail2ban/jail.conf.j2": fail2ban.jail_context(SITE, "mail01", ["mail", "webmail"]),
    "fail2ban/mailcluster-auth.conf.j2": {},
    "fail2ban/mailcluster-webmail.conf.j2": {},
    **DOVECOT_CONTEXTS,
    **EXIM_CONTEXTS,
    **WEBMAIL_CONTEXTS,
}


def all_templates() -> list[str]:
    root = templating.TEMPLATES
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.j2"))


def test_the_jail_names_the_sites_limits_and_never_bans_cluster_hosts() -> None:
    out = templating.render("fail2ban/jail.conf.j2", **CONTEXTS["fail2ban/jail.conf.j2"])
    bf = SITE.bruteforce
    assert f"maxretry = {bf.max_failures}\nfindtime = {bf.window_s}\nbantime = {bf.ban_s}\n" in out
    ignore = next(line for line in out.splitlines() if line.startswith("ignoreip"))
    assert all(f"{h.address}/32" in ignore for h in SITE.hosts)
    assert "[mailcluster-auth]" in out and "[mailcluster-webmail]" in out


@pytest.mark.parametrize(
    "line,address",
    [
        ("auth: passwd-file(alice,192.0.2.7,<nFgz41Nhu6oKTQAJ>): Password mismatch", "192.0.2.7"),
        ("auth: passwd-file(nosuch,192.0.2.8,<1PJR41NhOe0KTQAJ>): unknown user", "192.0.2.8"),
        ("auth: cram-md5(alice,192.0.2.9): Password mismatch", "192.0.2.9"),
        ("auth: passwd-file(alice,192.0.2.7): Password mismatch", "192.0.2.7"),
    ],
)
def test_the_auth_filter_takes_the_clients_address_from_dovecots_line(line, address) -> None:
    import re

    out = templating.render("fail2ban/mailcluster-auth.conf.j2")
    regex = next(x for x in out.splitlines() if x.startswith("failregex = "))[12:]
    # fail2ban's <HOST> is an address group; the same expression with a plain group:
    found = re.search(regex.replace("<HOST>", r"(?P<host>[0-9a-f.:]+)"), line)
    assert found and found.group("host") == address


def test_every_template_has_a_test_context() -> None:
    assert all_templates() == sorted(CONTEXTS)


def _is_php(template: str) -> bool:
    return (templating.TEMPLATES / template).read_text().startswith("<?php")


def _banner(template: str, comment: str) -> str:
    """The banner's exact text (written out here, not taken from templating)."""
    return (
        f"{comment} Managed by mailcluster, from templates/{template}.\n"
        f"{comment} Do not edit: local changes are overwritten on the next deploy.\n"
    )


@pytest.mark.parametrize("comment", ["#", "//", ";"])
@pytest.mark.parametrize("template", [t for t in sorted(CONTEXTS) if not _is_php(t)])
def test_render_adds_the_banner_once_on_top_and_the_templates_carry_none(
    template: str, comment: str
) -> None:
    """The banner comes from render(), never from a template: none holds its text (else a
    live file would carry it twice); render puts it once, with the given comment marker,
    first or right after a script's #! line, and leaves the rest as the template made it.
    (PHP files carry theirs inside, after "<?php": the next test.)
    tests/infra/test_banners.py checks the live files the deploy wrote."""
    source = (templating.TEMPLATES / template).read_text()
    assert "Managed by mailcluster" not in source and "Do not edit" not in source
    plain = templating.render(template, banner=False, **CONTEXTS[template])
    assert "Managed by mailcluster" not in plain
    out = templating.render(template, comment=comment, **CONTEXTS[template])
    if source.startswith("#!"):  # a script: its interpreter line stays first
        shebang, _, rest = plain.partition("\n")
        assert shebang == source.partition("\n")[0]
        assert out == f"{shebang}\n{_banner(template, comment)}{rest}"
    else:
        assert out == _banner(template, comment) + plain
    assert out.count("Managed by mailcluster") == 1


@pytest.mark.parametrize("template", [t for t in sorted(CONTEXTS) if _is_php(t)])
def test_php_templates_carry_their_own_banner_naming_themselves_once(template: str) -> None:
    # Rendered as the deploy does (banner=False): nothing may come before "<?php".
    out = templating.render(template, banner=False, **CONTEXTS[template])
    assert out.startswith("<?php\n" + _banner(template, "//"))
    assert out.count("Managed by mailcluster") == 1


@pytest.mark.parametrize("template", [t for t in sorted(CONTEXTS) if CONTEXTS[t]])
def test_a_missing_value_is_an_error_not_an_empty_string(template: str) -> None:
    with pytest.raises(jinja2.UndefinedError):
        templating.render(template)


def test_hosts_file_lists_every_cluster_host() -> None:
    out = templating.render("base/hosts.j2", **CONTEXTS["base/hosts.j2"])
    for h in SITE.hosts:
        assert f"{h.address}\t{h.name}.{SITE.domain}\t{h.name}\n" in out


def test_a_webmail_host_reaches_its_mail_node_under_the_service_names() -> None:
    """RoundCube keys its users by the IMAP host's name: the webmail hosts use the
    service name, pointed at their own mail node, and it stays when nodes change."""
    from mailcluster.roles.base import service_aliases

    site = SITE
    web = site.in_group("webmail")[0]
    node = site.webmail_mail_node(web.name)
    assert service_aliases(site, web) == (
        str(node.address),
        [str(site.service_names["imap"]), str(site.service_names["smtp"])],
    )
    assert service_aliases(site, site.in_group("mail")[0]) is None
    out = templating.render(
        "base/hosts.j2",
        me=web,
        hosts=site.hosts,
        domain=site.domain,
        services=service_aliases(site, web),
    )
    assert f"{node.address}\t{site.service_names['imap']}\t{site.service_names['smtp']}\n" in out


def test_chrony_runs_without_setting_the_clock_only_in_containers() -> None:
    assert "-x" in templating.render("chrony/default.j2", in_container=True, seccomp="-F 1")
    assert "-x" not in templating.render("chrony/default.j2", in_container=False, seccomp="-F 1")


def test_a_template_path_override_takes_precedence(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "ssh").mkdir()
    (tmp_path / "ssh" / "10-mailcluster.conf.j2").write_text("PasswordAuthentication yes\n")
    monkeypatch.setenv(templating.TEMPLATE_PATH_ENV, str(tmp_path))
    out = templating.render("ssh/10-mailcluster.conf.j2")
    assert f"from {tmp_path}/ssh/10-mailcluster.conf.j2" in out.splitlines()[0]
    assert out.endswith("PasswordAuthentication yes\n")


def test_passdb_proxies_only_users_of_other_backends() -> None:
    out = templating.render("dovecot/passdb.j2", **_PASSDB)
    assert "\nalice:{CRAM-MD5}" + "0" * 64 + "::::::\n" in out
    assert (
        "bob:{CRAM-MD5}" + "1" * 64 + "::::::proxy_maybe=y host=mail02.example.test "
        "hostip=127.0.0.3 port=993 ssl=yes proxy_timeout=20 master=mailcluster-proxy pass=m\n"
    ) in out


def test_dovecot_conf_writes_the_sizing_arithmetic_next_to_the_setting() -> None:
    out = templating.render(
        "dovecot/dovecot.conf.j2", **DOVECOT_CONTEXTS["dovecot/dovecot.conf.j2"]
    )
    assert f"# {_LIMITS.why['imap_process_limit']}\n  process_limit = 4096" in out


def test_exim_without_a_smarthost_looks_up_mx_records() -> None:
    ctx = {**EXIM_CONTEXTS["exim4/exim4.conf.j2"], "smarthost": None}
    out = templating.render("exim4/exim4.conf.j2", **ctx)
    assert "driver = dnslookup" in out and "manualroute\n  domains = ! +local_domains" not in out


def test_exim_smarthost_and_sizing_are_rendered_with_their_arithmetic() -> None:
    out = templating.render("exim4/exim4.conf.j2", **EXIM_CONTEXTS["exim4/exim4.conf.j2"])
    assert "route_list = * 127.0.0.1::25" in out
    limits = sizing.exim(4, 8192)
    assert f"# {limits.why['smtp_accept_max']}\nsmtp_accept_max = {limits.smtp_accept_max}" in out


def test_smarthost_site_forms_become_exims_host_port_syntax() -> None:
    from mailcluster.roles.exim import smarthost_route

    assert smarthost_route("relay.example.org") == "relay.example.org"
    assert smarthost_route("relay.example.org:587") == "relay.example.org::587"
    assert smarthost_route("10.77.0.1::25") == "10.77.0.1::25"
    assert smarthost_route(None) is None


def test_roundcube_config_is_php_with_the_banner_inside() -> None:
    ctx = WEBMAIL_CONTEXTS["roundcube/config.inc.php.j2"]
    out = templating.render("roundcube/config.inc.php.j2", banner=False, **ctx)
    assert out.startswith("<?php\n// Managed by mailcluster, from templates/roundcube/")
    assert "$config['imap_host'] = 'ssl://mail01.example.test:993';" in out
    legacy = templating.render(
        "roundcube/config.inc.php.j2", banner=False, **{**ctx, "legacy": True}
    )
    assert "$config['default_host'] = 'ssl://mail01.example.test';" in legacy
    assert "$config['default_port'] = 993;" in legacy


def test_php_accepts_exactly_the_attachment_limit() -> None:
    out = templating.render(
        "php/roundcube-pool.conf.j2", **WEBMAIL_CONTEXTS["php/roundcube-pool.conf.j2"]
    )
    assert "php_admin_value[upload_max_filesize] = 2097152\n" in out
    assert "pm.max_children = 102\n" in out  # 8192 MB x 0.5 / 40 MiB
