"""TLS audit: Debian's testssl.sh, run from the lab host against every TLS port of the
lab, with the site CA as the only trust anchor added. Any finding of severity MEDIUM or
worse fails, except the commented ones a private lab CA cannot avoid.

The JSON of each scan and a per-port summary go to artifacts/tls-audit/ (SECURITY.md
quotes the summary).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest import REPO, TARGET

# One folder per target: a Vagrant run must not overwrite the lab's summary.
OUT = REPO / "artifacts" / ("tls-audit" if TARGET == "lab" else f"tls-audit-{TARGET}")
SEVERE = {"MEDIUM", "HIGH", "CRITICAL"}
# What a private CA cannot have. Everything else MEDIUM or worse is a failure.
ALLOWED = {
    # The lab CA publishes no CRL and runs no OCSP responder: there is nowhere to reach
    # (the lab may not talk to anything outside this machine). Production certificates
    # from the university's CA carry both.
    "cert_revocation",
}
# One scan per service port: (name, testssl target arguments, which node kind).
PORTS = [
    ("imaps-993", ["{mail}:993"]),
    ("imap-143-starttls", ["--starttls", "imap", "{mail}:143"]),
    ("smtps-465", ["{mail}:465"]),
    ("submission-587-starttls", ["--starttls", "smtp", "{mail}:587"]),
    ("https-443", ["{webmail}:443"]),
]


def _addresses(lab: dict[str, Any]) -> dict[str, str]:
    """The address each kind of node is scanned at (its first host)."""
    return {
        kind: next(h["address"] for h in lab["hosts"] if kind in h["groups"])
        for kind in ("mail", "webmail")
    }


def _scan(name: str, target: list[str], ca_cert: str) -> list[dict[str, Any]]:
    out = OUT / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = ["testssl", "--quiet", "--color", "0", "--warnings", "off", "--add-ca", ca_cert]
    proc = subprocess.run(
        [*cmd, "--jsonfile", str(out), *target], capture_output=True, text=True, timeout=900
    )
    (OUT / f"{name}.txt").write_text(proc.stdout + proc.stderr)
    if not out.exists():
        pytest.fail(f"testssl wrote no JSON for {name}: {proc.stderr[-2000:]}")
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def scans(lab) -> dict[str, list[dict[str, Any]]]:
    if not shutil.which("testssl"):
        pytest.fail("testssl is not installed (scripts/host-deps installs Debian's testssl.sh)")
    OUT.mkdir(parents=True, exist_ok=True)
    jobs = {name: [a.format(**_addresses(lab)) for a in args] for name, args in PORTS}
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {n: pool.submit(_scan, n, t, lab["ca_cert"]) for n, t in jobs.items()}
        results = {n: f.result() for n, f in futures.items()}
    _summary(results)
    return results


def _by_id(findings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f["id"]: f for f in findings}


def _summary(results: dict[str, list[dict[str, Any]]]) -> None:
    keys = ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2", "TLS1_3", "cipher_order", "PFS"]
    keys += ["cert_chain_of_trust", "cert_expirationStatus"]
    lines = ["| port | " + " | ".join(keys) + " | MEDIUM+ findings |"]
    lines.append("|---" * (len(keys) + 2) + "|")
    for name, findings in results.items():
        ids = _by_id(findings)
        severe = sorted(f["id"] for f in findings if f["severity"] in SEVERE)
        cells = [ids.get(k, {}).get("finding", "-").replace("|", "/")[:40] for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {', '.join(severe) or 'none'} |")
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("port", [name for name, _ in PORTS])
def test_no_finding_of_medium_severity_or_worse(scans, port) -> None:
    severe = [
        f"{f['severity']} {f['id']}: {f['finding']}"
        for f in scans[port]
        if f["severity"] in SEVERE and f["id"] not in ALLOWED
    ]
    assert not severe, "\n".join(severe)


@pytest.mark.parametrize("port", [name for name, _ in PORTS])
def test_only_tls_1_2_and_1_3_strong_ciphers_forward_secrecy_and_a_valid_chain(scans, port) -> None:
    ids = _by_id(scans[port])
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert ids[old]["finding"] == "not offered", ids[old]
    assert ids["TLS1_2"]["finding"].startswith("offered")
    assert ids["TLS1_3"]["finding"].startswith("offered")
    for weak in ("NULL", "aNULL", "EXPORT", "LOW", "3DES_IDEA", "AVERAGE"):
        assert ids[f"cipherlist_{weak}"]["finding"] == "not offered", weak
    assert ids["PFS"]["finding"] == "offered", ids["PFS"]  # forward secrecy
    assert ids["cert_chain_of_trust"]["finding"].startswith("passed"), ids["cert_chain_of_trust"]
    assert ids["cert_expirationStatus"]["severity"] == "OK"  # valid long enough
    assert ids["cipher_order"]["finding"].startswith("server"), ids["cipher_order"]


@pytest.mark.parametrize("port", [name for name, _ in PORTS])
def test_the_scan_ran_to_its_end_against_this_port(scans, lab, port) -> None:
    """A scan that could not connect, or stopped half-way, has few findings and none
    severe: the severity test above passes on it. Its findings must be of this host and port
    (testssl's "ip" is "name/address"; "/" for notes about the scanning machine), with no
    scan problem, and end with the time the whole scan took."""
    target = next(args[-1] for name, args in PORTS if name == port)  # "{mail}:993"
    host, _, number = target.format(**_addresses(lab)).rpartition(":")
    problems = [f for f in scans[port] if f["severity"] == "FATAL" or f["id"] == "scanProblem"]
    assert not problems, problems
    elsewhere = [
        (f["id"], f["ip"], f["port"])
        for f in scans[port]
        if f["ip"] != "/" and (f["ip"].rpartition("/")[2] != host or f["port"] != number)
    ]
    assert not elsewhere, elsewhere
    ids = _by_id(scans[port])
    assert "scanTime" in ids and int(ids["scanTime"]["finding"]) > 0, "the scan did not finish"
    assert scans[port] == json.loads((OUT / f"{port}.json").read_text())  # the artifact


# testssl's checks of known attacks (its "vulnerabilities" section): each must have run
# and found nothing. secure_client_renego: a client cannot start a renegotiation (a
# denial-of-service lever, CVE-2011-1473); secure_renego: RFC 5746's safe renegotiation.
VULNERABILITIES = [
    "heartbleed",
    "CCS",
    "ROBOT",
    "secure_renego",
    "secure_client_renego",
    "CRIME_TLS",
    "POODLE_SSL",
    "fallback_SCSV",
    "SWEET32",
    "FREAK",
    "DROWN",
    "LOGJAM",
    "BEAST",
    "LUCKY13",
    "RC4",
]


@pytest.mark.parametrize("port", [name for name, _ in PORTS])
def test_no_known_attack_works_and_clients_cannot_renegotiate(scans, port) -> None:
    ids = _by_id(scans[port])
    missing = [v for v in VULNERABILITIES if v not in ids]
    assert not missing, f"testssl did not check {missing}"
    found = {v: f"{ids[v]['severity']}: {ids[v]['finding']}" for v in VULNERABILITIES}
    assert all(ids[v]["severity"] == "OK" for v in VULNERABILITIES), found
    assert ids["secure_client_renego"]["finding"] == "not vulnerable", found
    assert ids["secure_renego"]["finding"] == "supported", found
    if port == "https-443":
        assert ids["BREACH"]["severity"] == "OK", ids["BREACH"]


def test_the_summary_for_security_md_is_what_the_scans_found(scans) -> None:
    """SECURITY.md quotes summary.md: each port's row, read back, must say what that
    port's JSON (the artifact next to it) holds, and list no severe finding but the
    allowed ones."""
    rows = {}
    for line in (OUT / "summary.md").read_text().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    assert sorted(rows) == sorted(name for name, _ in PORTS)
    for name, _ in PORTS:
        findings = json.loads((OUT / f"{name}.json").read_text())
        old, new, severe = rows[name][:4], rows[name][4:6], rows[name][-1]
        assert old == ["not offered"] * 4, (name, rows[name])
        assert all(cell.startswith("offered") for cell in new), (name, rows[name])
        listed = set() if severe == "none" else set(severe.split(", "))
        assert listed == {f["id"] for f in findings if f["severity"] in SEVERE}, name
        assert listed <= ALLOWED, (name, listed - ALLOWED)
