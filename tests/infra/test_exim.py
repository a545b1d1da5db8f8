"""Exim's effective state on every mail node: the config it runs, routing, sockets, files."""

from __future__ import annotations

import pytest

from mailcluster import sizing
from tests.conftest import backend_of, host_address


def bp(host, option: str) -> str:  # noqa: ANN001
    """`exim4 -bP option` -> its value."""
    return host.run(f"exim4 -bP {option}").stdout.split("=", 1)[1].strip()


def test_exim_runs_the_owned_configuration(mail_host) -> None:
    assert mail_host.service("exim4").is_running
    out = mail_host.run("exim4 -bV").stdout
    assert "Configuration file is /etc/exim4/exim4.conf" in out


@pytest.mark.parametrize(
    "option,value",
    [
        ("daemon_smtp_ports", "25 : 465 : 587"),
        ("tls_on_connect_ports", "465"),
        # Key and chain in one file (mailcluster/tlsprofile.py EXIM_PEM): no key option.
        ("tls_certificate", "/etc/mailcluster/tls/exim.pem"),
        ("tls_privatekey", ""),
        ("tls_advertise_hosts", "*"),
    ],
)
def test_effective_option(mail_host, option: str, value: str) -> None:
    assert bp(mail_host, option) == value


def test_tls_allows_only_1_2_and_1_3(mail_host) -> None:
    priority = bp(mail_host, "tls_require_ciphers")
    assert "-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2" in priority


def test_limits_are_sized_from_the_hosts_cpus_and_memory(mail_host) -> None:
    cpus = int(mail_host.run("getconf _NPROCESSORS_ONLN").stdout)
    mem_kib = int(mail_host.run("LANG=C vmstat -s | awk '/total memory/ {print $1}'").stdout)
    want = sizing.exim(cpus, round(mem_kib / 1024))
    assert int(bp(mail_host, "smtp_accept_max")) == want.smtp_accept_max
    assert int(bp(mail_host, "smtp_accept_max_per_host")) == want.smtp_accept_max_per_host
    assert int(bp(mail_host, "queue_run_max")) == want.queue_run_max
    assert want.smtp_accept_max > 20  # the stock value


def test_local_users_route_to_their_backend(mail_host, lab) -> None:
    me = mail_host.backend.get_hostname()
    for account in lab["accounts"]:
        user = account["user"]
        out = mail_host.run(f"exim4 -bt {user}@{lab['domain']}").stdout
        if backend_of(lab, user) == me:
            assert "router = local_user" in out, out
        else:
            assert "router = to_backend" in out, out
            assert f"host {backend_of(lab, user)}.{lab['domain']}" in out, out


def test_other_domains_route_to_the_smarthost(mail_host, lab) -> None:
    out = mail_host.run("exim4 -bt someone@example.org").stdout
    sink = host_address(lab)  # the lab's (or the Vagrant cluster's) sink is the smarthost
    assert "router = smarthost" in out and f"host {sink}" in out and "port=25" in out


def test_unregistered_local_parts_are_unknown(mail_host, lab) -> None:
    out = mail_host.run(f"exim4 -bt nosuchuser@{lab['domain']}")
    assert out.rc != 0 and "Unrouteable address" in out.stdout


@pytest.mark.parametrize("port", [25, 465, 587])
def test_smtp_listens_on_every_address(mail_host, port: int) -> None:
    assert mail_host.socket(f"tcp://0.0.0.0:{port}").is_listening


def test_exim_can_read_the_tls_key_and_reach_dovecots_auth_socket(mail_host) -> None:
    for path in ("/etc/mailcluster/tls/privkey.pem", "/etc/mailcluster/tls/exim.pem"):
        key = mail_host.file(path)
        assert (key.user, key.group, key.mode) == ("root", "Debian-exim", 0o640), path
    # The one file holds the key and then the chain (leaf first), and the two match.
    pem = mail_host.file("/etc/mailcluster/tls/exim.pem").content_string
    assert pem.index("PRIVATE KEY-----") < pem.index("BEGIN CERTIFICATE")
    assert pem.endswith(mail_host.file("/etc/mailcluster/tls/fullchain.pem").content_string)
    sock = mail_host.file("/run/dovecot/auth-exim")
    assert sock.is_socket and sock.group == "Debian-exim" and sock.mode == 0o660


def test_a_full_mailbox_is_retried_for_four_days_then_bounced(mail_host) -> None:
    # Exim has no -bP for retry rules; the file is the one it runs (checked above).
    conf = mail_host.file("/etc/exim4/exim4.conf").content_string
    assert "*   quota   F,2h,5m; G,16h,1h,1.5; F,4d,6h" in conf
