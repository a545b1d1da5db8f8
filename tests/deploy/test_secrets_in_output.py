"""No secret value of the lab in what operators and CI see: `pyinfra --dry --diff` of
drifted secret-bearing files, the deploy's normal output, and every service's logs after
the suites before this one (make test runs tests/deploy after tests/e2e).

The secrets: the proxy master secret and its hash, the RoundCube database password and
des_key, every user's password and password hash, the bench users' password, and the TLS
private key's body."""

from __future__ import annotations

import base64
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailcluster import accounts, tlsprofile
from mailcluster.roles.db import PASSWORD_FILE
from mailcluster.roles.dovecot import MASTERDB, PASSDB
from tests.conftest import INVENTORY, pyinfra

# What each kind of host keeps secrets in (mailcluster/roles: secret=True).
SECRET_FILES = {
    "mail": [PASSDB, MASTERDB, tlsprofile.KEY, tlsprofile.EXIM_PEM],
    "webmail": ["/etc/roundcube/config.inc.php", "/root/.pgpass", tlsprofile.KEY],
    "db": [PASSWORD_FILE],
}
LOGS = (
    "/var/log/exim4/mainlog /var/log/exim4/rejectlog /var/log/exim4/paniclog "
    "/var/log/mail.log /var/log/syslog /var/log/auth.log /var/log/fail2ban.log "
    "/var/log/nginx/access.log /var/log/nginx/error.log /var/log/roundcube/errors.log "
    "/var/log/postgresql/*.log /var/log/php*-fpm.log"
)


def secret_values(lab: dict[str, Any]) -> dict[str, str]:
    """{value: what it is}; only values long enough not to match by chance."""
    site = yaml.safe_load(Path(lab["site_file"]).read_text())
    secrets_dir = Path(site["secrets_dir"])
    found: dict[str, str] = {}
    master = json.loads((secrets_dir / "dovecot-master.json").read_text())
    found[master["password"]] = "proxy master secret"
    hashed = accounts.ssha512_hash(master["password"], bytes.fromhex(master["salt"]))
    found[hashed.split("}", 1)[1]] = "proxy master hash"
    for name in ("roundcube-db-password", "roundcube-des-key"):
        found[(secrets_dir / name).read_text().strip()] = name
    for user, h in accounts.read_passwords(secrets_dir).items():
        found[h.split("}", 1)[1]] = f"{user}'s password hash"
    for a in lab["accounts"]:
        found[a["password"]] = f"{a['user']}'s password"
    found[lab["bench_accounts"]["password"]] = "the bench users' password"
    key = Path(site["tls"]["key"]).read_text()
    body = "".join(line for line in key.splitlines() if not line.startswith("-----"))
    for n, line in enumerate(re.findall(r".{40}", body)):
        found[line] = f"TLS private key (part {n})"
    # A base64 of the DER would be the same text; the raw key bytes, hex-encoded, too.
    found[base64.b64decode(body).hex()[:64]] = "TLS private key (hex)"
    return {v: what for v, what in found.items() if len(v) >= 8}


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return sorted({what for value, what in secrets.items() if value in text})


@pytest.fixture
def drifted(lab: dict[str, Any], lab_ssh: Any) -> dict[str, list[str]]:
    """Each secret-bearing file changed by hand on one host of each kind (a comment line
    appended: harmless until the deploy puts it back)."""
    out: dict[str, list[str]] = {}
    for group, paths in SECRET_FILES.items():
        name = next(h["name"] for h in lab["hosts"] if group in h["groups"])
        for path in paths:
            mark = "//" if path.endswith(".php") else "#"
            lab_ssh(name, f"echo {shlex.quote(mark + ' drifted by hand')} >> {path}")
        out.setdefault(name, []).extend(paths)
    return out


def test_dry_diff_and_deploy_show_no_secret(lab, lab_ssh, drifted) -> None:
    secrets = secret_values(lab)
    dry = pyinfra(INVENTORY, "deploy.py", "--dry", "--diff", yes=False)
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out[-3000:]
    assert leaks(out, secrets) == []
    for name, paths in drifted.items():
        for path in paths:
            # The diff did cover each file: it says it changes, without the values.
            assert re.search(rf"{name}.*Will modify {re.escape(path)} \(it holds secrets", out), (
                f"{name}: no diff line for {path}"
            )

    deploy = pyinfra(INVENTORY, "deploy.py")
    out = deploy.stdout + deploy.stderr
    assert deploy.returncode == 0, out[-3000:]
    assert leaks(out, secrets) == []
    for name, paths in drifted.items():
        for path in paths:
            probe = lab_ssh(name, f"grep -c 'drifted by hand' {path}", check=False)
            assert probe.stdout.strip() == "0", f"{name}: {path} not put back"


def test_no_service_log_holds_a_secret(lab, lab_ssh) -> None:
    secrets = secret_values(lab)
    patterns = "\n".join(secrets) + "\n"
    found = {}
    for h in lab["hosts"]:
        # The values go to the host on stdin only; grep prints which ones matched.
        proc = lab_ssh(
            h["name"],
            "f=$(mktemp) && chmod 600 $f && cat > $f && "
            f"{{ journalctl --no-pager -o cat; cat {LOGS} 2>/dev/null; }} "
            "| grep -oF -f $f | sort -u; rm -f $f",
            check=False,
            input=patterns,
        )
        hits = [line for line in proc.stdout.splitlines() if line]
        if hits:
            found[h["name"]] = sorted({secrets.get(v, "part of a secret") for v in hits})
    assert found == {}
