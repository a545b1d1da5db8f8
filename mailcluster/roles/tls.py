"""TLS material on a host: the site's certificate chain, key and CA, from outside the repo."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from pyinfra import host
from pyinfra.api.exceptions import DeployError
from pyinfra.api.operation import OperationMeta
from pyinfra.operations import files, server

from mailcluster import tlsprofile
from mailcluster.ops import managed_file
from mailcluster.site import Site

# Per host, the operations of the first call: Exim and Dovecot both need the material on
# a mail node; installing it twice in one run is work done twice.
_installed: dict[str, list[OperationMeta]] = {}

# A certificate closer than this to its end stops the run: renew it first.
MIN_VALIDITY = datetime.timedelta(days=7)
# Who verifies each service name, besides the rollout's health check (mailcluster/health.py).
_SERVICE_CLIENTS = {"imap": "IMAP clients", "smtp": "SMTP clients", "webmail": "browsers"}


def required_names(site: Site) -> dict[str, str]:
    """Every DNS name some client or node verifies the certificate for -> who does.

    The service names: what users are told; clients, and the rollout's health check
    (mailcluster/health.py), verify them. Each mail node's ``<name>.<domain>``: the Dovecot
    proxy (passdb ``host=``, ``ssl=yes``), Exim's hand-over to a user's backend
    (``tls_verify_hosts``) and RoundCube (``verify_peer_name``) reach a node by that
    name. A draining node is still a proxy target until its users have moved. The
    webmail and database hosts' own names are verified by nothing (RoundCube reaches
    PostgreSQL without TLS), so they are not required.
    """
    needs: dict[str, list[str]] = {}
    for service, name in site.service_names.items():
        clients = _SERVICE_CLIENTS.get(service, "clients")
        needs.setdefault(_normal(name), []).append(
            f"service {service}: {clients} and the rollout's health check verify it"
        )
    for node in site.in_group("mail"):
        label = f"node {node.name}, draining" if node.draining else f"node {node.name}"
        needs.setdefault(_normal(site.fqdn(node.name)), []).append(
            f"{label}: proxying and hand-over verify it"
        )
    return {name: "; ".join(reasons) for name, reasons in needs.items()}


def _normal(name: str) -> str:
    return name.strip().rstrip(".").lower()


def covers(pattern: str, name: str) -> bool:
    """Does one subjectAltName DNS entry cover ``name`` (RFC 6125, as clients match)?

    Exact, ignoring case; or ``*`` as the whole left-most label, standing for exactly one
    label: ``*.example.org`` covers ``a.example.org``, not ``a.b.example.org`` nor
    ``example.org``. A wildcard right under a top-level domain (``*.org``) or anywhere
    but the left-most label covers nothing."""
    pattern, name = _normal(pattern), _normal(name)
    if "*" not in pattern:
        return pattern == name
    first, _, rest = pattern.partition(".")
    if first != "*" or "*" in rest or "." not in rest:
        return False
    label, _, parent = name.partition(".")
    return bool(label) and parent == rest


def check_material(site: Site) -> None:
    """On the deploying machine, before any host gets them: the key belongs to the
    certificate, the chain verifies against the CA, the certificate is valid for a week
    more, and it covers every name the deploy uses (:func:`required_names`). A wrong file
    would otherwise break TLS on every node it reached.

    Called from :func:`install_tls`, i.e. while pyinfra loads deploy.py for each host
    (its prepare phase), so a failure stops the run before any operation executes."""
    names = required_names(site)
    key = (str(site.tls.key), str(site.tls.cert), str(site.tls.ca_cert), tuple(sorted(names)))
    if key in _checked:
        return
    path, cert, ca, _ = key
    now = datetime.datetime.now(datetime.timezone.utc)

    chain = _certificates(cert)
    leaf = chain[0]
    private_key = _private_key(path)
    if _spki(private_key.public_key()) != _spki(leaf.public_key()):
        raise DeployError(f"TLS material: the key {path} does not belong to the certificate {cert}")
    _check_chain(cert, ca, chain, _certificates(ca), now)
    if leaf.not_valid_before_utc > now:
        raise DeployError(
            f"TLS material: {cert} is not valid yet "
            f"(from {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC)"
        )
    if leaf.not_valid_after_utc - now < MIN_VALIDITY:
        raise DeployError(
            f"TLS material: {cert} expires within a week "
            f"({leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC); renew it first"
        )
    _check_names(cert, leaf, names)
    _checked.add(key)


_checked: set[tuple[str, str, str, tuple[str, ...]]] = set()


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise DeployError(f"TLS material: cannot read {path}: {exc.strerror}") from None


def _certificates(path: str) -> list[x509.Certificate]:
    """Every certificate of a PEM file, in file order (a chain: the leaf first)."""
    try:
        return x509.load_pem_x509_certificates(_read(path))
    except ValueError:
        raise DeployError(f"TLS material: {path} holds no readable PEM certificate") from None


def _private_key(path: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(_read(path), password=None)
    except TypeError:  # encrypted
        raise DeployError(
            f"TLS material: the key {path} is encrypted; the services need it without a passphrase"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise DeployError(f"TLS material: {path} holds no readable PEM private key") from None


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _issued(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """``parent`` issued ``child``: the names match and its key verifies the signature."""
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _may_issue(cert: x509.Certificate, anchor: bool) -> bool:
    """A CA certificate (basicConstraints CA:TRUE). A trust anchor without the extension
    (an old v1 root) is accepted, as OpenSSL does; one that says CA:FALSE is not."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return anchor
    return constraints.ca


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _check_chain(
    cert: str,
    ca: str,
    chain: list[x509.Certificate],
    anchors: list[x509.Certificate],
    now: datetime.datetime,
) -> None:
    """From the leaf, issuer by issuer through the chain file's other certificates, up to
    one of ``ca``'s; every issuer on the way within its validity."""
    current, path = chain[0], [chain[0]]
    while True:
        anchor = next((a for a in anchors if _may_issue(a, True) and _issued(current, a)), None)
        if anchor is not None:
            path.append(anchor)
            break
        parent = next(
            (
                c
                for c in chain[1:]
                if c not in path and _may_issue(c, False) and _issued(current, c)
            ),
            None,
        )
        if parent is None:
            raise DeployError(
                f"TLS material: {cert} does not chain to the CA {ca}: no certificate there or "
                f"in the chain issued {_name(current)} (issuer {current.issuer.rfc4514_string()})"
            )
        path.append(parent)
        current = parent
    for issuer in path[1:]:
        if not issuer.not_valid_before_utc <= now <= issuer.not_valid_after_utc:
            raise DeployError(
                f"TLS material: the chain of {cert} does not verify: {_name(issuer)} is valid "
                f"only from {issuer.not_valid_before_utc:%Y-%m-%d} "
                f"to {issuer.not_valid_after_utc:%Y-%m-%d}"
            )


def _check_names(cert: str, leaf: x509.Certificate, names: dict[str, str]) -> None:
    """Every required name is covered by a subjectAltName DNS entry. The subject's CN does
    not count: clients ignore it once a certificate has subjectAltNames, and current ones
    ignore it always."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        cns = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        cn = f" (its CN {cns[0].value!r} counts for no client)" if cns else ""
        wanted = "\n".join(f"  {name} ({why})" for name, why in names.items())
        raise DeployError(
            f"TLS material: the certificate {cert} has no subjectAltName{cn}; "
            f"it must list every name the deploy uses:\n{wanted}"
        ) from None
    except ValueError as exc:
        raise DeployError(f"TLS material: {cert}: unreadable extensions ({exc})") from None
    dns = san.get_values_for_type(x509.DNSName)
    missing = [
        f"  {name} ({why})"
        for name, why in names.items()
        if not any(covers(pattern, name) for pattern in dns)
    ]
    if missing:
        raise DeployError(
            f"TLS material: the certificate {cert} does not cover every name the deploy "
            "uses; missing:\n"
            + "\n".join(missing)
            + f"\nIt covers: {', '.join(dns) or 'no DNS name'}"
        )


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
    key = managed_file(
        name="Private key (0640)",
        content=_read(str(site.tls.key)).decode(),
        dest=tlsprofile.KEY,
        mode="640",
        user="root",
        group=key_group,
        secret=True,  # --diff says which lines change, never the key
    )
    ops = [certs, key]
    if "mail" in host.groups:
        ops.append(
            managed_file(
                name="Key and chain in one file, for Exim (0640)",
                content=_read(str(site.tls.key)).decode() + _read(str(site.tls.cert)).decode(),
                dest=tlsprofile.EXIM_PEM,
                mode="640",
                user="root",
                group="Debian-exim",
                secret=True,
            )
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
    return [*ops, ca, trusted]
