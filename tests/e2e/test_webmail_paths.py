"""What upstream's .htaccess denies is denied by nginx too (it reads no .htaccess).

RoundCube 1.4 (Ubuntu 20.04) serves its whole program folder (/var/lib/roundcube):
configuration, SQL, logs, code and docs are files under the document root there, so
only nginx's rules keep them from the web. 1.5+ serves public_html, where the same
requests find nothing; the test says which of the paths exist on the host."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.conftest import lab_state_hosts, platform_of

# Upstream's .htaccess (1.4 to 1.6): "deny access to some locations" and "to some
# documentation files", plus dot files.
DENIED = [
    "config/config.inc.php",
    "config/defaults.inc.php",
    "SQL/postgres.initial.sql",
    "bin/update.sh",
    "logs/",
    "temp/",
    "installer/",
    "installer/index.php",
    "tests/",
    "vendor/autoload.php",
    "program/include/iniset.php",
    "program/lib/Roundcube/bootstrap.php",
    "program/localization/en_US/labels.inc",
    "program/steps/mail/func.inc",
    "README.md",
    "CHANGELOG",
    "CHANGELOG.md",
    "INSTALL",
    "UPGRADING",
    "SECURITY.md",
    "composer.json",
    "composer.json-dist",
    "jsdeps.json",
    ".htaccess",
]

WEBMAIL_HOSTS = [h["name"] for h in lab_state_hosts() if "webmail" in h["groups"]]


def get(url: str, ca: str) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=ca)
    try:
        with urllib.request.urlopen(url, timeout=20, context=ctx) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="module", params=WEBMAIL_HOSTS or ["(lab is not up)"])
def webmail_node(request: pytest.FixtureRequest, lab: dict[str, Any]) -> dict[str, Any]:
    return next(h for h in lab["hosts"] if h["name"] == request.param)


def test_the_login_page_is_served(lab: dict[str, Any], webmail_node: dict[str, Any]) -> None:
    status, body = get(f"https://{webmail_node['address']}/", lab["ca_cert"])
    assert status == 200 and b"rcmloginuser" in body


@pytest.mark.parametrize("path", DENIED)
def test_what_htaccess_denies_is_refused(
    lab: dict[str, Any], webmail_node: dict[str, Any], path: str
) -> None:
    status, body = get(f"https://{webmail_node['address']}/{path}", lab["ca_cert"])
    assert status in (403, 404), (path, status, body[:200])
    assert b"<?php" not in body and b"$config" not in body and b"CREATE TABLE" not in body


def test_on_roundcube_1_4_the_denied_files_are_under_the_document_root(
    lab: dict[str, Any], webmail_node: dict[str, Any], lab_ssh: Any
) -> None:
    """On 1.4 the refusals above are nginx's rules at work, not missing files."""
    import testinfra

    host = testinfra.get_host(f"ssh://{webmail_node['name']}", ssh_config=lab["ssh_config"])
    docroot = platform_of(host).roundcube_docroot
    if docroot != "/var/lib/roundcube":
        pytest.skip(f"{webmail_node['name']} serves {docroot} (RoundCube 1.5+): nothing to hide")
    present = [p for p in DENIED if host.file(f"{docroot}/{p.rstrip('/')}").exists]
    for must in ("config/config.inc.php", "program/include/iniset.php", "temp/", "logs/"):
        assert must in present, (must, present)
