"""TLS material is checked on the deploying machine before any host gets it: the key
matches, the chain verifies, it is valid a week more, and it covers every name the
deploy uses (service names, every mail node's FQDN)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyinfra.api.exceptions import DeployError

from mailcluster import site
from mailcluster.roles import tls
from tests.unit.test_site import LOOPBACK

# What the loopback site (tests/fixtures/sites/loopback.yaml) needs covered.
SERVICES = ["imap.example.test", "smtp.example.test", "webmail.example.test"]
NODES = ["mail01.example.test", "mail02.example.test"]
ALL_NAMES = SERVICES + NODES


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def issue(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    days: int = 30,
    sans: list[str] | None = None,
    ca: bool = False,
) -> x509.Certificate:
    """A certificate for ``key``, signed by ``issuer`` (self-signed without one)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def make_pki(
    d: Path, days: int = 30, sans: list[str] | None = ALL_NAMES, cn: str = "imap.example.test"
) -> dict[str, Path]:
    """A CA and a leaf it signed; the chain file holds the leaf and the CA (as the lab's)."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key = new_key()
    ca = issue("test CA", ca_key, ca=True, days=3650)
    key = new_key()
    leaf = issue(cn, key, (ca, ca_key), days=days, sans=sans)
    (d / "ca.pem").write_bytes(pem(ca))
    (d / "c.pem").write_bytes(pem(leaf, ca))
    return {"ca_cert": d / "ca.pem", "cert": d / "c.pem", "key": write_key(d / "k.pem", key)}


def site_with(paths: dict[str, Path], **changes: Any) -> site.Site:
    data = yaml.safe_load(LOOPBACK.read_text())
    data["tls"] = {k: str(v) for k, v in paths.items()}
    data.update(changes)
    return site.parse(data, "site.yaml")


def refusal(s: site.Site) -> str:
    with pytest.raises(DeployError) as exc:
        tls.check_material(s)
    return str(exc.value)


def test_matching_material_passes(tmp_path) -> None:
    tls.check_material(site_with(make_pki(tmp_path)))


def test_the_names_the_deploy_uses_are_the_service_names_and_every_mail_node() -> None:
    data = yaml.safe_load(LOOPBACK.read_text())
    data["hosts"].append({"name": "mail03", "address": "127.0.0.5", "groups": ["mail"]})
    data["hosts"][-1]["draining"] = True
    names = tls.required_names(site.parse(data, "site.yaml"))
    # Not webmail01's own name: nothing verifies it.
    assert list(names) == [*ALL_NAMES, "mail03.example.test"]
    assert names["mail02.example.test"] == "node mail02: proxying and hand-over verify it"
    assert names["mail03.example.test"].startswith("node mail03, draining: ")
    assert names["smtp.example.test"].startswith("service smtp: ")


def test_a_key_of_another_certificate_stops_the_run(tmp_path) -> None:
    paths = make_pki(tmp_path)
    other = write_key(tmp_path / "other.pem", new_key())
    with pytest.raises(DeployError, match="does not belong to the certificate"):
        tls.check_material(site_with({**paths, "key": other}))


def test_a_certificate_of_another_ca_stops_the_run(tmp_path) -> None:
    paths = make_pki(tmp_path)
    foreign = make_pki(tmp_path / "b")
    message = refusal(site_with({**paths, "ca_cert": foreign["ca_cert"]}))
    assert f"{paths['cert']} does not chain to the CA {foreign['ca_cert']}" in message


def test_a_chain_through_an_intermediate_verifies_and_one_without_it_does_not(tmp_path) -> None:
    root_key, inter_key, key = new_key(), new_key(), new_key()
    root = issue("test root", root_key, ca=True)
    inter = issue("test intermediate", inter_key, (root, root_key), ca=True)
    leaf = issue("imap.example.test", key, (inter, inter_key), sans=ALL_NAMES)
    (tmp_path / "root.pem").write_bytes(pem(root))
    (tmp_path / "full.pem").write_bytes(pem(leaf, inter))
    (tmp_path / "leaf.pem").write_bytes(pem(leaf))
    paths = {"ca_cert": tmp_path / "root.pem", "key": write_key(tmp_path / "k.pem", key)}
    tls.check_material(site_with({**paths, "cert": tmp_path / "full.pem"}))
    message = refusal(site_with({**paths, "cert": tmp_path / "leaf.pem"}))
    assert "does not chain to the CA" in message and "CN=test intermediate" in message


def test_a_chain_through_a_non_ca_certificate_does_not_verify(tmp_path) -> None:
    root_key, middle_key, key = new_key(), new_key(), new_key()
    root = issue("test root", root_key, ca=True)
    middle = issue("not a CA", middle_key, (root, root_key), ca=False, sans=ALL_NAMES)
    leaf = issue("imap.example.test", key, (middle, middle_key), sans=ALL_NAMES)
    (tmp_path / "root.pem").write_bytes(pem(root))
    (tmp_path / "full.pem").write_bytes(pem(leaf, middle))
    paths = {"ca_cert": tmp_path / "root.pem", "cert": tmp_path / "full.pem"}
    message = refusal(site_with({**paths, "key": write_key(tmp_path / "k.pem", key)}))
    assert "does not chain to the CA" in message


def test_a_certificate_about_to_expire_stops_the_run(tmp_path) -> None:
    with pytest.raises(DeployError, match="expires within a week"):
        tls.check_material(site_with(make_pki(tmp_path, days=3)))


def test_a_certificate_missing_one_nodes_name_stops_the_run_and_names_that_node(
    tmp_path,
) -> None:
    # Its CN is the missing name: clients ignore the CN when there are subjectAltNames.
    paths = make_pki(
        tmp_path,
        sans=[n for n in ALL_NAMES if n != "mail02.example.test"],
        cn="mail02.example.test",
    )
    message = refusal(site_with(paths))
    assert str(paths["cert"]) in message
    assert "mail02.example.test (node mail02: proxying and hand-over verify it)" in message
    missing = message.split("missing:", 1)[1].split("It covers:", 1)[0]
    assert [line.split()[0] for line in missing.strip().splitlines()] == ["mail02.example.test"]


def test_a_missing_service_name_is_named_with_every_other_missing_name(tmp_path) -> None:
    paths = make_pki(
        tmp_path,
        sans=[n for n in ALL_NAMES if n not in ("smtp.example.test", "mail01.example.test")],
    )
    message = refusal(site_with(paths))
    assert "smtp.example.test (service smtp: SMTP clients" in message
    assert "mail01.example.test (node mail01: proxying and hand-over verify it)" in message
    assert "imap.example.test (" not in message


def test_a_wildcard_covers_one_label_only(tmp_path) -> None:
    tls.check_material(site_with(make_pki(tmp_path / "a", sans=["*.example.test"])))
    # The nodes one label deeper (mail01.campus.example.test) are not covered by it.
    deeper = site_with(
        make_pki(tmp_path / "b", sans=["*.example.test"]), domain="campus.example.test"
    )
    message = refusal(deeper)
    assert "mail01.campus.example.test (node mail01" in message
    assert "mail02.campus.example.test (node mail02" in message
    assert "imap.example.test (" not in message


@pytest.mark.parametrize(
    "pattern,name,covered",
    [
        ("imap.example.org", "imap.example.org", True),
        ("IMAP.Example.org", "imap.example.org", True),
        ("imap.example.org.", "imap.example.org", True),
        ("*.example.org", "a.example.org", True),
        ("*.example.org", "a.b.example.org", False),
        ("*.example.org", "example.org", False),
        ("*.org", "example.org", False),
        ("a.*.example.org", "a.b.example.org", False),
        ("m*.example.org", "mail01.example.org", False),
        ("imap.example.org", "smtp.example.org", False),
    ],
)
def test_name_matching(pattern: str, name: str, covered: bool) -> None:
    assert tls.covers(pattern, name) is covered


def test_a_certificate_without_subject_alt_names_is_refused_whatever_its_cn(tmp_path) -> None:
    message = refusal(site_with(make_pki(tmp_path, sans=None, cn="imap.example.test")))
    assert f"the certificate {tmp_path / 'c.pem'} has no subjectAltName" in message
    assert "'imap.example.test' counts for no client" in message
    for name in ALL_NAMES:
        assert f"  {name} (" in message


def test_the_material_is_checked_once_per_run(tmp_path) -> None:
    s = site_with(make_pki(tmp_path))
    tls.check_material(s)
    for f in tmp_path.iterdir():
        f.unlink()
    tls.check_material(s)  # not read again: the material of this run passed already
