"""TLS material on a host: the site's certificate chain, key and CA, from outside the repo."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, server

from mailcluster import tlsprofile
from mailcluster.site import Site

# Per host, the operations of the first call: Exim and Dovecot both need the material on
# a mail node; installing it twice in one run is work done twice.
_installed: dict[str, list[OperationMeta]] = {}


def install_tls() -> list[OperationMeta]:
    """Called inside a service's deploy. Returns the operations, so the service can
    reload when its certificate changed."""
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
