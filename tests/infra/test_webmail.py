"""The webmail node's effective state: services, RoundCube's configuration, secrets."""

from __future__ import annotations

import base64

import pytest

from tests.conftest import platform_of


def rc_config(host, key: str) -> str:  # noqa: ANN001
    """A value of RoundCube's effective configuration (its own loader, as PHP sees it)."""
    php = (
        "<?php define('INSTALL_PATH', '/var/lib/roundcube/'); "
        "require '/usr/share/roundcube/program/include/iniset.php'; "
        f"$c = rcube::get_instance()->config->get('{key}'); "
        "echo is_array($c) ? json_encode($c) : var_export($c, true);"
    )
    encoded = base64.b64encode(php.encode()).decode()
    return host.run(f"echo {encoded} | base64 -d | php 2>/dev/null").stdout.strip()


@pytest.mark.parametrize("service", ["nginx", "php-fpm", "postgresql"])
def test_webmail_services_run_and_start_at_boot(webmail_host, service: str) -> None:
    if service == "php-fpm":
        service = f"php{platform_of(webmail_host).php}-fpm"
    svc = webmail_host.service(service)
    assert svc.is_running and svc.is_enabled


# {domain}: the cluster's mail domain (lab info).
COMMON_SETTINGS = [
    ("smtp_user", "'%u'"),
    ("session_storage", "'db'"),
    ("mail_domain", "'{domain}'"),
    ("enable_installer", "false"),
    # One-step PLAIN (SASL-IR) over TLS, not CRAM-MD5: Dovecot 2.3.7 can hang a two-step
    # login over TLS (tests/e2e/test_webmail.py checks what the mail nodes logged).
    ("imap_auth_type", "'PLAIN'"),
]
# Where the IMAP and SMTP servers are, in the option names of the host's RoundCube: the
# service names (RoundCube keys its users by the IMAP host's name, which must not change
# when mail nodes do), which the webmail host's /etc/hosts points at its mail node.
SERVER_SETTINGS = {
    "1.6": [
        ("imap_host", "'ssl://imap.{domain}:993'"),
        ("smtp_host", "'tls://smtp.{domain}:587'"),
    ],
    "legacy": [
        ("default_host", "'ssl://imap.{domain}'"),
        ("default_port", "993"),
        ("smtp_server", "'tls://smtp.{domain}'"),
        ("smtp_port", "587"),
    ],
}


def mail_node_fqdn(lab, webmail: str) -> str:  # noqa: ANN001
    """The mail node a webmail node talks to: the webmail nodes take the mail nodes in
    turn, in the order lab info lists them (mailcluster/roles/webmail.py)."""
    mail = [h["name"] for h in lab["hosts"] if "mail" in h["groups"]]
    web = [h["name"] for h in lab["hosts"] if "webmail" in h["groups"]]
    return f"{mail[web.index(webmail) % len(mail)]}.{lab['domain']}"


@pytest.mark.parametrize("key,value", COMMON_SETTINGS)
def test_roundcube_effective_setting(webmail_host, lab, key: str, value: str) -> None:
    assert rc_config(webmail_host, key) == value.format(domain=lab["domain"])


def test_roundcube_finds_the_mail_node(webmail_host, lab) -> None:
    names = "legacy" if platform_of(webmail_host).roundcube_legacy_options else "1.6"
    for key, value in SERVER_SETTINGS[names]:
        assert rc_config(webmail_host, key) == value.format(domain=lab["domain"]), key
    # The service names lead to this webmail host's own mail node.
    mail = mail_node_fqdn(lab, webmail_host.backend.get_hostname())
    address = next(h["address"] for h in lab["hosts"] if f"{h['name']}.{lab['domain']}" == mail)
    for service in ("imap", "smtp"):
        found = webmail_host.run(f"getent hosts {service}.{lab['domain']}").stdout.split()
        assert found[:1] == [address], (service, found)


def test_roundcube_verifies_the_mail_nodes_certificates(webmail_host) -> None:
    opts = rc_config(webmail_host, "imap_conn_options")
    assert '"verify_peer":true' in opts and "ca-certificates.crt" in opts


def test_php_accepts_uploads_up_to_the_attachment_limit(webmail_host) -> None:
    php = platform_of(webmail_host).php
    pool = webmail_host.file(f"/etc/php/{php}/fpm/pool.d/roundcube.conf").content_string
    assert "php_admin_value[upload_max_filesize] = 2097152" in pool


def test_secrets_are_not_world_readable(webmail_host) -> None:
    conf = webmail_host.file("/etc/roundcube/config.inc.php")
    assert (conf.user, conf.group, conf.mode) == ("root", "www-data", 0o640)
    assert webmail_host.file("/root/.pgpass").mode == 0o600
    key = webmail_host.file("/etc/mailcluster/tls/privkey.pem")
    assert (key.user, key.mode) == ("root", 0o640)
    des_key = rc_config(webmail_host, "des_key").strip("'")
    assert len(des_key) == 24


@pytest.mark.parametrize("port", [80, 443])
def test_nginx_listens(webmail_host, port: int) -> None:
    assert webmail_host.socket(f"tcp://0.0.0.0:{port}").is_listening


def test_roundcubes_schema_is_in_the_shared_database(webmail_host) -> None:
    out = webmail_host.run(
        "psql -h 127.0.0.1 -U roundcube -d roundcube -tAc "
        "\"select value from system where name='roundcube-version'\""
    )
    assert out.rc == 0 and out.stdout.strip().isdigit(), out.stderr


def test_postgresql_accepts_only_roundcube_with_a_password(webmail_host) -> None:
    pg = platform_of(webmail_host).postgresql
    hba = webmail_host.file(f"/etc/postgresql/{pg}/main/pg_hba.conf").content_string
    rules = [ln.split() for ln in hba.splitlines() if ln and not ln.startswith("#")]
    hosts = [r for r in rules if r[0] == "host"]
    assert hosts and all(r[1:3] == ["roundcube", "roundcube"] for r in hosts)
    assert all(r[-1] == "scram-sha-256" for r in hosts)
