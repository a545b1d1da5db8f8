"""IMAP/SMTP accounts: password hashes, and which mail node is each user's backend."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

USER_RE = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")  # what NSS and Dovecot both accept

# -- CRAM-MD5 --------------------------------------------------------------------------
# Dovecot's {CRAM-MD5} scheme stores the HMAC-MD5 intermediate state: the MD5 state after
# the key^opad block and after the key^ipad block, each as four little-endian words.
# It verifies CRAM-MD5 (which needs exactly this state) and plaintext LOGIN/PLAIN alike.

_S = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4
_K = [int(abs(math.sin(i + 1)) * 2**32) & 0xFFFFFFFF for i in range(64)]
_MD5_INIT = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)


def _md5_block(state: tuple[int, int, int, int], block: bytes) -> tuple[int, int, int, int]:
    """One MD5 compression (RFC 1321) of a 64-byte block: hashlib keeps its state hidden."""
    m = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | ~d), (7 * i) % 16
        f = (f + a + _K[i] + m[g]) & 0xFFFFFFFF
        a, d, c = d, c, b
        b = (b + ((f << _S[i]) | (f >> (32 - _S[i])))) & 0xFFFFFFFF
    return tuple((x + y) & 0xFFFFFFFF for x, y in zip(state, (a, b, c, d), strict=True))  # type: ignore[return-value]


def cram_md5_hash(password: str) -> str:
    """``{CRAM-MD5}`` + 64 hex digits, as ``doveadm pw -s CRAM-MD5`` prints it."""
    key = password.encode()
    if len(key) > 64:
        key = hashlib.md5(key).digest()
    key = key.ljust(64, b"\0")
    outer = _md5_block(_MD5_INIT, bytes(k ^ 0x5C for k in key))
    inner = _md5_block(_MD5_INIT, bytes(k ^ 0x36 for k in key))
    return "{CRAM-MD5}" + struct.pack("<8I", *outer, *inner).hex()


def ssha512_hash(password: str, salt: bytes) -> str:
    """``{SSHA512}``: salted SHA-512, for the proxy master user (salt kept: idempotent)."""
    import base64

    digest = hashlib.sha512(password.encode() + salt).digest()
    return "{SSHA512}" + base64.b64encode(digest + salt).decode()


# -- user -> backend ---------------------------------------------------------------------


def backend_for(user: str, nodes: Iterable[str], overrides: Mapping[str, str] | None = None) -> str:
    """The mail node that holds ``user``'s mailbox: rendezvous (highest-random-weight)
    hashing, so adding a node moves only the users it wins (about 1/N), and removing one
    moves only its own users. A per-user override (site data) wins."""
    nodes = list(nodes)
    if not nodes:
        raise ValueError("no mail nodes")
    if overrides and user in overrides:
        return overrides[user]
    return max(nodes, key=lambda n: hashlib.sha256(f"{n}\0{user}".encode()).digest())


# -- the password store (on the deploying machine, in the site's secrets_dir) ------------


def passwords_file(secrets_dir: Path) -> Path:
    return secrets_dir / "imap-passwords"


@contextlib.contextmanager
def locked(secrets_dir: Path, what: str = "store") -> Iterator[None]:
    """An exclusive lock on the deploying machine, held for the block: ``"store"`` around
    a read-modify-write of the password store (two `mailctl passwd` at once would
    otherwise each write the store they read, and one change would be lost), ``"push"``
    around a passdb push (a push renders the store as it reads it; serialised, the last
    push has every change made before it started). A lock file in secrets_dir, so it
    covers every mailctl on this machine; operators on two machines are not covered."""
    secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(secrets_dir / f".{what}.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _counter(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except FileNotFoundError:
        return 0


def _write_counter(path: Path, value: int) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{value}\n")
    tmp.rename(path)


def store_generation(secrets_dir: Path) -> int:
    """How many times the password store was written through :func:`write_passwords`."""
    return _counter(secrets_dir / ".imap-passwords.generation")


def pushed_generation(secrets_dir: Path) -> int:
    """The store generation the mail nodes' passdbs last had in full (see mailctl)."""
    return _counter(secrets_dir / ".imap-passwords.pushed")


def record_pushed(secrets_dir: Path, generation: int) -> None:
    _write_counter(secrets_dir / ".imap-passwords.pushed", generation)


def read_passwords(secrets_dir: Path) -> dict[str, str]:
    """``{user: "{CRAM-MD5}..."}``; an absent file is no users yet."""
    path = passwords_file(secrets_dir)
    if not path.exists():
        return {}
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        user, _, hashed = line.partition(":")
        if not USER_RE.match(user) or not re.fullmatch(r"\{CRAM-MD5\}[0-9a-f]{64}", hashed):
            raise ValueError(f"{path}:{n}: expected USER:{{CRAM-MD5}}<64 hex digits>")
        out[user] = hashed
    return out


def write_passwords(secrets_dir: Path, hashes: Mapping[str, str]) -> None:
    """Replace the store atomically (write, fsync, rename), mode 0600."""
    secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = passwords_file(secrets_dir)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    body = "".join(f"{u}:{hashes[u]}\n" for u in sorted(hashes))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# IMAP/SMTP passwords (Dovecot CRAM-MD5 hashes). Written by mailctl.\n" + body)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.rename(path)
    _write_counter(secrets_dir / ".imap-passwords.generation", store_generation(secrets_dir) + 1)
