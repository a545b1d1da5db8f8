"""Webmail sessions live in the shared database, so any webmail node serves them."""

from __future__ import annotations

from tests.e2e.webmail_http import WebmailSession


def test_a_webmail_session_is_stored_in_the_shared_database(lab, lab_ssh) -> None:
    account = lab["accounts"][1]
    web = WebmailSession(lab)
    web.login(account["user"], account["password"])
    assert web.logged_in_as() == account["user"]
    sess_id = next(c.value for c in web.jar if c.name == "roundcube_sessid")
    db_host = next(h["name"] for h in lab["hosts"] if "db" in h["groups"])
    rows = lab_ssh(
        db_host,
        "sudo -u postgres psql -d roundcube -tAc "
        f"\"select count(*) from session where sess_id = '{sess_id}'\"",
    ).stdout.strip()
    assert rows == "1"


def test_every_webmail_node_shares_the_database_and_the_session_key(lab, lab_ssh) -> None:
    import re

    nodes = [h["name"] for h in lab["hosts"] if "webmail" in h["groups"]]
    seen = {}
    for n in nodes:
        conf = lab_ssh(n, "cat /etc/roundcube/config.inc.php").stdout
        dsn = re.search(r"\$config\['db_dsnw'\] = '[^:]+://([^@]+)@[^/]+/(\w+)'", conf)
        key = re.search(r"\$config\['des_key'\] = '([^']+)'", conf)
        assert dsn and key, conf[:300]
        seen[n] = (dsn.groups(), key.group(1))  # credentials and database, not the host
    assert len(set(seen.values())) == 1, seen


def test_webmail_tls_is_1_2_or_newer_and_verifies_against_the_site_ca(lab) -> None:
    import subprocess

    host = lab["endpoints"]["webmail"].split("/")[2]

    def s_client(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "s_client", "-connect", f"{host}:443", *args],
            input="",
            capture_output=True,
            text=True,
            timeout=30,
        )

    for old in ("-tls1", "-tls1_1"):
        assert "Cipher is (NONE)" in s_client(old, "-cipher", "DEFAULT@SECLEVEL=0").stdout
    for new in ("-tls1_2", "-tls1_3"):
        ok = s_client(new, "-CAfile", lab["ca_cert"], "-verify_return_error")
        assert ok.returncode == 0 and "Verify return code: 0 (ok)" in ok.stdout


def test_dovecot_sees_the_browsers_address_not_the_webmail_hosts(lab, lab_ssh) -> None:
    """RoundCube's mailcluster plugin passes the browser's address on (IMAP ID): Dovecot's
    failed-login penalty then slows that browser only, not every webmail user."""
    import time

    account = lab["accounts"][2]
    source = lab["client_addresses"][5]
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - 1))
    web = WebmailSession(lab, source=source)
    web.login(account["user"], account["password"])
    assert web.logged_in_as() == account["user"]
    logins = "\n".join(
        lab_ssh(
            h["name"],
            f"TZ=UTC journalctl -u dovecot --since '{since}' --no-pager "
            f"| grep 'Login: user=<{account['user']}>'",
            check=False,
        ).stdout
        for h in lab["hosts"]
        if "mail" in h["groups"]
    )
    assert f"rip={source}," in logins, logins[-1000:]
    webmail_addresses = [h["address"] for h in lab["hosts"] if "webmail" in h["groups"]]
    assert not any(f"rip={a}," in logins for a in webmail_addresses), logins[-1000:]
