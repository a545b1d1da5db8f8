"""A certificate that lacks one mail node's name stops the deploy before any host is
touched, and the run names that node (issue 13). The pre-flight check
(mailcluster/roles/tls.py, check_material) runs while pyinfra prepares the operations."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mailcluster import site as site_mod
from mailcluster import tlsprofile
from tests.conftest import INVENTORY, REPO, pyinfra

# What install_tls puts on a host: byte for byte what it was after the refused run.
TLS_FILES = f"{tlsprofile.TLS_DIR}/* {tlsprofile.SYSTEM_CA}"

# The target's own inventory, with another site file: inventory/lab.py reads only the
# lab's site file (MAILCLUSTER_SITE does not reach it), so this wrapper runs it and then
# selects the copy; group_data/all.py reads the selected file. Only the groups are public
# names (pyinfra takes every other module-level list as a group too).
WRAPPER = '''\
"""{inventory} with the site file {site}."""
import runpy as _runpy
from pathlib import Path as _Path

from mailcluster import inventory as _inventory

_target = _runpy.run_path({inventory!r})
_inventory.load_or_exit(_Path({site!r}))
mail = _target["mail"]
webmail = _target["webmail"]
db = _target["db"]
'''


def leaf_without(
    site: site_mod.Site,
    left_out: str | None,
    addresses: list[str],
    out: Path,
    days: float = 90,
) -> Path:
    """Key and chain (leaf + CA) signed by the target's own CA, with the names its own
    certificate has (mailcluster/lab/pki.py) except ``left_out``, valid ``days`` from
    now. Returns the folder."""
    ca_path = Path(site.tls.ca_cert)
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    # The lab keeps its CA key next to the CA (mailcluster/lab/pki.py, ensure_ca); so does
    # the Vagrant cluster, which uses the same code. Read here, never written.
    ca_key = serialization.load_pem_private_key(
        ca_path.with_name("ca.key").read_bytes(), password=None
    )
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey), "the lab's CA key is P-256"
    names = list(site.service_names.values())
    names += [site.fqdn(h.name) for h in site.hosts] + [h.name for h in site.hosts]
    names = [n for n in names if n != left_out]
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in names]
                + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(mode=0o700)
    fd = os.open(out / "privkey.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    chain = [leaf.public_bytes(serialization.Encoding.PEM), ca_path.read_bytes()]
    (out / "fullchain.pem").write_bytes(b"".join(chain))
    return out


def tls_files(lab: dict[str, Any], lab_ssh: Any) -> dict[str, str]:
    """Per host: the TLS files' checksums and modification times."""
    probe = f"sha256sum {TLS_FILES}; stat -c '%n %y' {TLS_FILES}"
    return {h["name"]: lab_ssh(h["name"], probe, check=False).stdout for h in lab["hosts"]}


def test_a_certificate_missing_a_nodes_name_stops_the_run_before_any_host_is_touched(
    lab: dict[str, Any], lab_ssh: Any, tmp_path: Path
) -> None:
    site_file = Path(lab["site_file"])
    site = site_mod.load(site_file)
    left_out = [h["name"] for h in lab["hosts"] if "mail" in h["groups"]][-1]
    fqdn = site.fqdn(left_out)
    material = leaf_without(site, fqdn, [h["address"] for h in lab["hosts"]], tmp_path / "tls")

    data = yaml.safe_load(site_file.read_text())
    data["tls"] = {
        "ca_cert": str(site.tls.ca_cert),
        "cert": str(material / "fullchain.pem"),
        "key": str(material / "privkey.pem"),
    }
    copy = tmp_path / "site.yaml"
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    site_mod.load(copy)  # the schema takes it: the run must stop at the certificate
    inventory = tmp_path / Path(INVENTORY).name  # same file name: the same pyinfra groups
    inventory.write_text(WRAPPER.format(inventory=str(REPO / INVENTORY), site=str(copy)))

    before = tls_files(lab, lab_ssh)
    assert tlsprofile.CERT in before[left_out], f"{left_out} has no certificate: deploy first"
    proc = pyinfra(str(inventory), "deploy.py")
    after = tls_files(lab, lab_ssh)
    if after != before:  # the check let it through: put the target's own material back
        restored = pyinfra(INVENTORY, "deploy.py")
        assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]

    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert f"{fqdn} (node {left_out}: proxying and hand-over verify it)" in out, out[-3000:]
    assert str(material / "fullchain.pem") in out, out[-3000:]
    assert "Beginning operation run" not in out, out[-3000:]
    changed = sorted(name for name in before if after[name] != before[name])
    assert not changed, f"TLS files changed on {changed}"
