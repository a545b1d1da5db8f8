"""The base role's effective state on every lab host (testinfra, over SSH)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml


def _poll(check, timeout: float = 60.0, interval: float = 1.0):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def test_systemd_is_running_with_no_failed_units(host) -> None:
    state = host.run("systemctl is-system-running --wait").stdout.strip()
    failed = host.run("systemctl --failed --no-legend --plain").stdout.strip()
    assert state == "running", f"system state {state!r}; failed units:\n{failed}"
    assert failed == ""


def test_hostname_is_the_inventory_name(host) -> None:
    name = host.backend.get_hostname()
    assert host.run("hostname").stdout.strip() == name
    assert host.file("/etc/hostname").content_string.strip().splitlines()[-1] == name


def test_cluster_names_resolve_on_every_host(host, lab) -> None:
    for other in lab["hosts"]:
        fqdn = f"{other['name']}.{lab['domain']}"
        out = host.run(f"getent hosts {fqdn}").stdout.split()
        assert out[:1] == [other["address"]], f"{fqdn} resolves to {out}"


def test_timezone_is_the_site_setting(host) -> None:
    # The lab's site file keeps the schema default, Asia/Tokyo.
    assert host.file("/etc/localtime").linked_to == "/usr/share/zoneinfo/Asia/Tokyo"
    assert host.run("date +%Z").stdout.strip() == "JST"
    assert host.file("/etc/timezone").content_string.strip() == "Asia/Tokyo"


def test_time_sync_is_active_and_synchronised(host) -> None:
    assert host.service("chrony").is_running
    assert host.service("chrony").is_enabled
    # '^*' marks the source chronyd has selected: it is tracking the site's NTP server.
    synced = _poll(lambda: "^*" in host.run("chronyc -n sources").stdout)
    assert synced, host.run("chronyc -n sources; chronyc tracking").stdout


def test_sshd_effective_config_refuses_passwords(host) -> None:
    effective = host.run("sshd -T").stdout
    assert "passwordauthentication no" in effective
    assert "kbdinteractiveauthentication no" in effective
    assert "permitrootlogin without-password" in effective  # = prohibit-password


@pytest.mark.parametrize(
    "path",
    [
        "/etc/hosts",
        "/etc/hostname",
        "/etc/chrony/chrony.conf",
        "/etc/ssh/sshd_config.d/10-mailcluster.conf",
        "/etc/apt/apt.conf.d/20auto-upgrades",
    ],
)
def test_managed_files_carry_the_banner_naming_their_template(host, path: str) -> None:
    head = host.file(path).content_string.splitlines()[:2]
    assert "Managed by mailcluster, from templates/" in head[0], head
    assert "overwritten" in head[1]


def test_the_reload_script_runs_by_itself_and_names_its_services(host) -> None:
    script = host.file("/usr/local/sbin/mailcluster-reload")
    assert script.mode == 0o755 and script.content_string.startswith("#!/bin/sh\n")
    usage = host.run("/usr/local/sbin/mailcluster-reload")
    assert usage.rc == 2 and "usage: mailcluster-reload exim4|dovecot" in usage.stderr


def test_unattended_security_updates_are_enabled(host) -> None:
    assert host.package("unattended-upgrades").is_installed
    conf = host.run("apt-config dump APT::Periodic").stdout
    assert 'APT::Periodic::Unattended-Upgrade "1";' in conf


def test_apt_uses_the_sites_proxy(host, lab) -> None:
    proxy = yaml.safe_load(Path(lab["site_file"]).read_text())["apt_proxy"]
    assert f'Acquire::http::Proxy "{proxy}";' in host.run("apt-config dump").stdout
