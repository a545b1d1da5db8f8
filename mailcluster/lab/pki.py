"""The lab's own PKI: a CA and one certificate for every name the services answer to.

Generated once under the git-ignored state folder and kept across `down`/`up`, so clients
that trusted the CA keep trusting it. Valid 825 days: long enough that a TLS audit's
expiry warning never fires in the lab, short enough for clients that cap leaf lifetimes.
"""

from __future__ import annotations

from pathlib import Path

from mailcluster.lab import config
from mailcluster.lab.system import run

CA_DAYS = 3650
LEAF_DAYS = 825


def _ec_key(path: Path) -> None:
    """A fresh P-256 private key, readable by root only."""
    run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            path,
        ]
    )
    path.chmod(0o600)


def ensure_ca() -> tuple[Path, Path]:
    tls = config.SECRETS / "tls"
    tls.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_key, ca_cert = tls / "ca.key", tls / "ca.pem"
    if not ca_cert.exists() or not ca_key.exists():
        _ec_key(ca_key)
        run(
            [
                "openssl",
                "req",
                "-x509",
                "-new",
                "-key",
                ca_key,
                "-sha256",
                "-days",
                str(CA_DAYS),
                "-subj",
                "/O=mailcluster lab/CN=mailcluster lab CA",
                "-out",
                ca_cert,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]
        )
    return ca_key, ca_cert


def ensure_leaf(names: list[str], addresses: list[str]) -> tuple[Path, Path]:
    """One certificate covering every service name, node name and node address."""
    tls = config.SECRETS / "tls"
    ca_key, ca_cert = ensure_ca()
    key, cert, sans_file = tls / "privkey.pem", tls / "fullchain.pem", tls / "sans.txt"
    sans = ",".join([f"DNS:{n}" for n in names] + [f"IP:{a}" for a in addresses])
    if cert.exists() and key.exists() and sans_file.exists() and sans_file.read_text() == sans:
        return key, cert
    _ec_key(key)
    csr = tls / "leaf.csr"
    run(["openssl", "req", "-new", "-key", key, "-subj", f"/CN={names[0]}", "-out", csr])
    ext = tls / "leaf.ext"
    ext.write_text(
        f"subjectAltName={sans}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    leaf = tls / "leaf.pem"
    run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca_cert,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-days",
            str(LEAF_DAYS),
            "-sha256",
            "-extfile",
            ext,
            "-out",
            leaf,
        ]
    )
    cert.write_text(leaf.read_text() + ca_cert.read_text())
    sans_file.write_text(sans)
    for tmp in (csr, ext, leaf):
        tmp.unlink()
    return key, cert
