"""Dovecot's effective state on every mail node: the config it runs, files, sockets."""

from __future__ import annotations

import pytest

from mailcluster import sizing


def doveconf(host, setting: str) -> str:  # noqa: ANN001
    return host.run(f"doveconf -h {setting}").stdout.strip()


def test_dovecot_runs_and_starts_at_boot(mail_host) -> None:
    svc = mail_host.service("dovecot")
    assert svc.is_running and svc.is_enabled


@pytest.mark.parametrize(
    "setting,value",
    [
        ("protocols", "imap"),
        ("ssl", "yes"),
        ("disable_plaintext_auth", "yes"),
        ("auth_mechanisms", "plain login cram-md5"),
        ("ssl_min_protocol", "TLSv1.2"),
        ("ssl_prefer_server_ciphers", "yes"),
        ("mail_location", "maildir:~/Maildir"),
        ("ssl_cert", "</etc/mailcluster/tls/fullchain.pem"),
        ("ssl_key", "</etc/mailcluster/tls/privkey.pem"),
    ],
)
def test_effective_setting(mail_host, setting: str, value: str) -> None:
    assert doveconf(mail_host, setting) == value


def test_weak_ciphers_are_not_in_the_effective_list(mail_host) -> None:
    ciphers = doveconf(mail_host, "ssl_cipher_list")
    for weak in ("RC4", "3DES", "NULL", "EXPORT", "MD5", "CBC"):
        assert weak not in ciphers


def test_limits_are_sized_from_the_hosts_cpus_and_memory(mail_host) -> None:
    cpus = int(mail_host.run("getconf _NPROCESSORS_ONLN").stdout)
    # As pyinfra's Memory fact reads it: KiB total memory / 1024, rounded.
    mem_kib = int(mail_host.run("LANG=C vmstat -s | awk '/total memory/ {print $1}'").stdout)
    mem_mb = round(mem_kib / 1024)
    want = sizing.dovecot(cpus, mem_mb)
    conf = mail_host.run("doveconf -n").stdout
    imap_block = conf.split("service imap {", 1)[1].split("}", 1)[0]
    assert f"process_limit = {want.imap_process_limit}" in imap_block
    assert want.imap_process_limit >= 1000
    assert mail_host.run("systemctl show -p LimitNOFILE --value dovecot").stdout.strip() == str(
        want.nofile
    )

    # What the process got: the unit's limit, unless the machine caps lower (a lab host
    # without CAP_SYS_RESOURCE hands its containers its own hard limit).
    def open_files(pid: str) -> int:
        limits = mail_host.run(f"cat /proc/{pid}/limits").stdout
        return int(next(ln for ln in limits.splitlines() if "open files" in ln).split()[4])

    main_pid = mail_host.run("systemctl show -p MainPID --value dovecot").stdout.strip()
    assert open_files(main_pid) == min(want.nofile, open_files("1"))


def test_passdb_and_keys_are_not_world_readable(mail_host) -> None:
    for path in ("/etc/dovecot/mailcluster/passdb", "/etc/dovecot/mailcluster/masterdb"):
        f = mail_host.file(path)
        assert (f.user, f.group, f.mode) == ("root", "dovecot", 0o640), path
    key = mail_host.file("/etc/mailcluster/tls/privkey.pem")
    assert (key.user, key.group, key.mode) == ("root", "Debian-exim", 0o640)


@pytest.mark.parametrize("port", [143, 993])
def test_imap_listens_on_every_address(mail_host, port: int) -> None:
    assert mail_host.socket(f"tcp://0.0.0.0:{port}").is_listening


def test_the_site_ca_is_in_the_system_trust_store(mail_host, lab) -> None:
    address = lab["hosts"][0]["address"]
    out = mail_host.run(
        f"openssl s_client -connect {address}:993 -verify_return_error "
        "-CAfile /etc/ssl/certs/ca-certificates.crt </dev/null"
    )
    assert "Verify return code: 0 (ok)" in out.stdout, out.stdout[-500:]


@pytest.mark.parametrize("home_filesystem", ["local", "nfs"])
def test_doveconf_on_the_node_accepts_both_home_filesystems(
    mail_host, lab, home_filesystem
) -> None:
    """The deploy's dovecot.conf for this node with homes local (the lab) and on NFS
    (production): this node's doveconf takes both, and the NFS one has Dovecot's NFS
    settings. The lab's kernel has no NFS: what runs on NFS is not exercised here."""
    from pathlib import Path

    from mailcluster import site as site_mod
    from mailcluster import sizing, templating
    from mailcluster.roles.dovecot import conf_context

    site = site_mod.load(Path(lab["site_file"]))
    site = site.model_copy(update={"home_filesystem": home_filesystem})
    name = mail_host.check_output("hostname -s")
    limits = sizing.dovecot(2, 2048)
    body = templating.render("dovecot/dovecot.conf.j2", **conf_context(site, name, limits))
    path = f"/tmp/dovecot-{home_filesystem}.conf"
    mail_host.run(f"cat > {path} <<'MAILCLUSTER_EOF'\n{body}\nMAILCLUSTER_EOF")
    try:
        check = mail_host.run(f"doveconf -n -c {path}")
        assert check.rc == 0, check.stderr
        got = {
            k: mail_host.check_output(f"doveconf -c {path} -h {k}")
            for k in ("mmap_disable", "mail_fsync", "mail_nfs_storage", "mail_nfs_index")
        }
    finally:
        mail_host.run(f"rm -f {path}")
    if home_filesystem == "nfs":
        assert got == {
            "mmap_disable": "yes",
            "mail_fsync": "always",
            "mail_nfs_storage": "no",
            "mail_nfs_index": "no",
        }
    else:  # Dovecot's defaults
        assert got["mmap_disable"] == "no" and got["mail_fsync"] == "optimized"
