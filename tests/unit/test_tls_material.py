"""TLS material is checked on the deploying machine before any host gets it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pyinfra.api.exceptions import DeployError

from mailcluster import site
from mailcluster.roles import tls
from tests.unit.test_site import LOOPBACK


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_pki(d: Path, days: int = 30) -> dict[str, Path]:
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "k.pem", "c.csr", "c.pem"))
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", ca_key)
    openssl(
        "req", "-x509", "-new", "-key", ca_key, "-subj", "/CN=test CA", "-days", "30", "-out", ca
    )
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    openssl("req", "-new", "-key", key, "-subj", "/CN=imap.example.test", "-out", csr)
    openssl(
        "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-days", str(days), "-out", cert
    )
    return {"ca_cert": ca, "cert": cert, "key": key}


def site_with(paths: dict[str, Path]) -> site.Site:
    import yaml

    data = yaml.safe_load(LOOPBACK.read_text())
    data["tls"] = {k: str(v) for k, v in paths.items()}
    return site.parse(data, "site.yaml")


def test_matching_material_passes(tmp_path) -> None:
    tls.check_material(site_with(make_pki(tmp_path)))


def test_a_key_of_another_certificate_stops_the_run(tmp_path) -> None:
    paths = make_pki(tmp_path)
    other = tmp_path / "other.pem"
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", other)
    with pytest.raises(DeployError, match="does not belong to the certificate"):
        tls.check_material(site_with({**paths, "key": other}))


def test_a_certificate_of_another_ca_stops_the_run(tmp_path) -> None:
    paths = make_pki(tmp_path)
    (tmp_path / "b").mkdir()
    foreign = make_pki(tmp_path / "b")
    with pytest.raises(DeployError, match="openssl verify"):
        tls.check_material(site_with({**paths, "ca_cert": foreign["ca_cert"]}))


def test_a_certificate_about_to_expire_stops_the_run(tmp_path) -> None:
    with pytest.raises(DeployError, match="expires within a week"):
        tls.check_material(site_with(make_pki(tmp_path, days=3)))
