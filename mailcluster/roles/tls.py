"""TLS material on a host: the site's certificate chain, key and CA, from outside the repo."""

from __future__ import annotations

import subprocess

from pyinfra import host
from pyinfra.api.exceptions import DeployError
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, server

from mailcluster import tlsprofile
from mailcluster.site import Site

# Per host, the operations of the first call: Exim and Dovecot both need the material on
# a mail node; installing it twice in one run is work done twice.
_installed: dict[str, list[OperationMeta]] = {}


def check_material(site: Site) -> None:
    """On the deploying machine, before any host gets them: the key belongs to the
    certificate, the chain verifies against the CA, and the certificate is valid for a
    week more. A wrong file would otherwise break TLS on every node it reached."""
    key = (str(site.tls.key), str(site.tls.cert), str(site.tls.ca_cert))
    if key in _checked:
        return
    path, cert, ca = key

    def openssl(*args: str) -> str:
        proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise DeployError(f"TLS material: openssl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    if openssl("pkey", "-in", path, "-pubout") != openssl("x509", "-in", cert, "-noout", "-pubkey"):
        raise DeployError(f"TLS material: the key {path} does not belong to the certificate {cert}")
    openssl("verify", "-CAfile", ca, "-untrusted", cert, cert)
    week = str(7 * 24 * 3600)
    checkend = ["openssl", "x509", "-in", cert, "-noout", "-checkend", week]
    if subprocess.run(checkend, capture_output=True).returncode:
        raise DeployError(f"TLS material: {cert} expires within a week; renew it first")
    _checked.add(key)


_checked: set[tuple[str, str, str]] = set()


def install_tls() -> list[OperationMeta]:
    """Called inside a service's deploy. Returns the operations, so the service can
    reload when its certificate changed."""
    check_material(host.data.site)
    if host.name in _installed:
        return _installed[host.name]
    _installed[host.name] = _install()
    return _installed[host.name]


def _install() -> list[OperationMeta]:
    site: Site = host.data.site
    files.directory(name="TLS folder", path=tlsprofile.TLS_DIR, mode="755")
    certs = files.put(
        name="Certificate chain", src=str(site.tls.cert), dest=tlsprofile.CERT, mode="644"
    )
    # Exim reads the key as its own user (Debian-exim) after dropping root; Dovecot and
    # nginx read it as root.
    key_group = "Debian-exim" if "mail" in host.groups else "root"
    key = files.put(
        name="Private key (0640)",
        src=str(site.tls.key),
        dest=tlsprofile.KEY,
        mode="640",
        user="root",
        group=key_group,
    )
    ca = files.put(name="Site CA", src=str(site.tls.ca_cert), dest=tlsprofile.CA, mode="644")
    # In the system trust store too: Dovecot's proxy, Exim and RoundCube verify the
    # other nodes against it (Dovecot's login processes read only the system store).
    trusted = files.put(
        name="Trust the site CA", src=str(site.tls.ca_cert), dest=tlsprofile.SYSTEM_CA, mode="644"
    )
    server.shell(
        name="Rebuild the system trust store",
        commands=["update-ca-certificates"],
        _if=trusted.did_change,
    )
    return [certs, key, ca, trusted]
