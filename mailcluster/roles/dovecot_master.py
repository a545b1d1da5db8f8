"""The proxy master user (part of the Dovecot role, roles/dovecot.py): its secret,
generated once on the deploying machine, and the masterdb that lets only the other mail
nodes log in with it (the passdb's proxy fields carry the password to them)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from pyinfra.api.operation import OperationMeta

from mailcluster import accounts
from mailcluster.ops import managed_file
from mailcluster.passdb import MASTER_USER
from mailcluster.roles.dovecot_conf import MASTERDB
from mailcluster.site import Site


def master_secret(secrets_dir: Path) -> dict[str, str]:
    """The proxy master user's password and salt: generated once, never regenerated."""
    path = secrets_dir / "dovecot-master.json"
    if not path.exists():
        secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        value = {"password": secrets.token_urlsafe(32), "salt": secrets.token_hex(8)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(value, fh)
    return json.loads(path.read_text())


def install_masterdb(site: Site, node: str) -> OperationMeta:
    master = master_secret(site.secrets_dir)
    return managed_file(
        name="The proxy master user (masterdb)",
        dest=MASTERDB,
        template="dovecot/masterdb.j2",
        context={
            "master_user": MASTER_USER,
            "hash": accounts.ssha512_hash(master["password"], bytes.fromhex(master["salt"])),
            "proxies": [h.address for h in site.in_group("mail") if h.name != node],
        },
        secret=True,
        mode="640",
        group="dovecot",
        notify=["dovecot.reload"],
    )
