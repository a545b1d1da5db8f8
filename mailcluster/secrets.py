"""Secrets the deploy generates itself (database password, RoundCube's des_key...):
made once in the site's secrets_dir on the deploying machine (0600), never regenerated
(a new des_key on every run would log every webmail user out)."""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path

_ALPHABET = string.ascii_letters + string.digits


def generated_secret(secrets_dir: Path, name: str, length: int = 32) -> str:
    path = secrets_dir / name
    if not path.exists():
        secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        value = "".join(secrets.choice(_ALPHABET) for _ in range(length))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value + "\n")
    return path.read_text().strip()
