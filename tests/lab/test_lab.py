"""The lab itself, as DESIGN.md specifies it: contract, network rule, homes, sink, cache."""

from __future__ import annotations

import json
import smtplib
import subprocess
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml

from mailcluster.lab.platforms import PLATFORMS
from tests.conftest import REPO, host_address, lab_cli, lab_state_hosts
from tests.lab.nft_eval import verdict

BRIDGE = "mclab0"
# The lab machines' addresses (its state, as `info --json` lists them): the packets below
# come from and go to them. (Without a lab the ruleset fixture fails first.)
MACHINES = [h["address"] for h in lab_state_hosts()] or ["(lab is not up)"] * 2


def mail_hosts(lab) -> list[str]:  # noqa: ANN001
    return [h["name"] for h in lab["hosts"] if "mail" in h["groups"]]


# -- the contract ---------------------------------------------------------------------


def test_info_json_has_every_contract_field(lab) -> None:
    for key in ("domain", "ca_cert", "ssh_config", "hosts", "endpoints", "accounts", "sink"):
        assert key in lab, key
    assert Path(lab["ca_cert"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert Path(lab["ssh_config"]).is_file()
    assert set(lab["endpoints"]) >= {"imap", "smtp", "webmail"}
    assert all(set(h) >= {"name", "address", "groups", "platform"} for h in lab["hosts"])
    assert lab["platform"] in PLATFORMS
    assert lab["accounts"] and all(a["user"] and a["password"] for a in lab["accounts"])
    assert Path(lab["sink"]).is_dir()


def test_small_topology_is_two_mail_nodes_and_a_webmail_node_with_the_database(lab) -> None:
    if lab.get("topology") != "small":
        pytest.skip("lab runs another topology")
    groups = {h["name"]: set(h["groups"]) for h in lab["hosts"]}
    assert sorted(n for n, g in groups.items() if g == {"mail"}) == ["mail01", "mail02"]
    assert groups["webmail01"] == {"webmail", "db"}


def test_each_machine_runs_its_platform(lab, lab_ssh) -> None:
    """Mail nodes run the lab's platform; webmail hosts the one the README recommends
    when that platform's RoundCube is not safe (topology.webmail_platform)."""
    from mailcluster.lab.topology import webmail_platform

    for h in lab["hosts"]:
        want = webmail_platform(lab["platform"]) if "webmail" in h["groups"] else lab["platform"]
        if h["name"] in ("mail01", "mail02", "webmail01"):
            assert h["platform"] == want, h
        p = PLATFORMS[h["platform"]]
        release = lab_ssh(h["name"], ". /etc/os-release; echo $NAME; echo $VERSION_ID").stdout
        name, version = release.split("\n")[:2]
        assert name.startswith(p.distro) and version == p.version, (h["name"], release)


def test_full_topology_is_the_production_inventory() -> None:
    from mailcluster import site
    from mailcluster.lab.topology import machines

    prod = site.load(REPO / "group_data" / "site.yaml")
    full = machines("full")
    assert [(m.name, list(m.groups)) for m in full] == [(h.name, h.groups) for h in prod.hosts]
    assert len(full) == 20
    assert len({m.address for m in full}) == 20


def test_every_machine_is_reachable_by_ssh_config_name(lab, lab_ssh) -> None:
    for h in lab["hosts"]:
        assert lab_ssh(h["name"], "hostname").stdout.strip() == h["name"]


def test_machines_run_systemd_as_pid_1_in_an_nspawn_container(lab, lab_ssh) -> None:
    for h in lab["hosts"]:
        out = lab_ssh(h["name"], "cat /proc/1/comm; systemd-detect-virt -c").stdout.split()
        assert out == ["systemd", "systemd-nspawn"]


def up_again(lab):  # noqa: ANN001, ANN201
    """`lab up` with the running lab's own topology and platforms."""
    web = next(h["platform"] for h in lab["hosts"] if "webmail" in h["groups"])
    return lab_cli(
        "up",
        "--topology",
        lab["topology"],
        "--platform",
        lab["platform"],
        "--webmail-platform",
        web,
    )


def test_up_again_is_a_quick_no_op(lab) -> None:
    started = time.monotonic()
    proc = up_again(lab)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stderr
    assert time.monotonic() - started < 30


def test_status_reports_every_machine_up(lab) -> None:
    proc = lab_cli("status")
    assert proc.returncode == 0, proc.stdout
    for h in lab["hosts"]:
        assert f"{h['name']}" in proc.stdout


# -- power: stop and start (a node that dies, and comes back) ---------------------------


def _ssh_answers(lab, name: str) -> bool:  # noqa: ANN001
    probe = subprocess.run(
        [
            "ssh",
            "-F",
            lab["ssh_config"],
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=3",
            name,
            "true",
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0


def unfence(lab_ssh, name: str) -> str:  # noqa: ANN001
    """Release a mail node fenced by its boot check and start its mail services (what the
    deploy does after writing the maps); returns what the fence said before."""
    was = lab_ssh(name, "mailcluster-fence status 2>/dev/null || echo none").stdout.strip()
    lab_ssh(name, "mailcluster-fence release >/dev/null 2>&1; systemctl start dovecot exim4")
    return str(was)


def test_stop_cuts_a_machines_power_and_start_boots_it_with_its_disk(lab, lab_ssh) -> None:
    name = mail_hosts(lab)[-1]
    token = uuid.uuid4().hex
    # Written, not synced: a power cut in the lab keeps what the machine's processes wrote.
    lab_ssh(name, f"echo {token} > /root/before-the-cut; systemctl is-active dovecot exim4")
    boot_id = lab_ssh(name, "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    stop = lab_cli("stop", name)
    assert stop.returncode == 0, stop.stderr
    try:
        assert not _ssh_answers(lab, name)
        status = lab_cli("status")
        assert status.returncode == 3, status.stdout
        assert any(line.startswith(name) and "off" in line for line in status.stdout.splitlines())
        # No shutdown ran: the machine's journal ends without systemd stopping anything.
    finally:
        start = lab_cli("start", name)
    assert start.returncode == 0, start.stderr
    assert lab_ssh(name, "cat /root/before-the-cut").stdout.strip() == token
    assert lab_ssh(name, "cat /proc/sys/kernel/random/boot_id").stdout.strip() != boot_id
    # The previous boot ended without a shutdown (a power cut): systemd (PID 1) never
    # reached a shutdown target in it (a clean reboot logs four of these lines).
    ended = lab_ssh(
        name,
        "journalctl -b -1 _PID=1 --no-pager -o cat | grep -c 'Stopped target Multi-User "
        "System\\|Reached target Shutdown\\|Reached target Power-Off\\|Reached target "
        "Final Step\\|Reached target Reboot' || true",
    ).stdout.strip()
    assert ended == "0", ended
    # A deployed mail node comes back fenced from a power cut (roles/fencing.py): its
    # mail services wait for a deploy. Nothing changed meanwhile: released by hand here.
    assert unfence(lab_ssh, name) == "fenced"
    active = lab_ssh(name, "systemctl is-active dovecot exim4", check=False).stdout.split()
    assert active == ["active", "active"], active
    assert lab_cli("status").returncode == 0


def test_up_boots_a_stopped_machine_again(lab, lab_ssh) -> None:
    name = mail_hosts(lab)[-1]
    assert lab_cli("stop", name).returncode == 0
    up = up_again(lab)
    assert up.returncode == 0, up.stderr
    assert "nothing to do" in up.stderr  # booted, not rebuilt
    assert _ssh_answers(lab, name)
    unfence(lab_ssh, name)
    assert lab_cli("status").returncode == 0


# -- the network rule: only the package mirror and DNS ------------------------------


@pytest.fixture(scope="module")
def ruleset() -> dict:
    out = subprocess.run(
        ["nft", "-j", "list", "table", "inet", "mclab"], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


def _sets(ruleset: dict) -> dict[str, list[str]]:
    return {i["set"]["name"]: i["set"]["elem"] for i in ruleset["nftables"] if "set" in i}


def _out(daddr: str, proto: str, dport: int, family: str = "ip") -> dict:
    return {
        "iif": BRIDGE,
        "oif": "eth0",
        "family": family,
        "saddr": MACHINES[0],
        "daddr": daddr,
        "proto": proto,
        "dport": dport,
    }


def test_nat_sets_hold_exactly_the_mirror_and_the_host_resolvers(ruleset) -> None:
    from mailcluster.lab import net

    sets = _sets(ruleset)
    assert sorted(sets["mirror4"]) == net.mirror_addresses()
    assert sorted(sets["dns4"]) == sorted(net.host_resolvers())


def test_lab_machines_may_reach_the_package_mirror_and_dns(ruleset) -> None:
    sets = _sets(ruleset)
    for mirror in sets["mirror4"]:
        for port in (80, 443):
            assert verdict(ruleset, "forward", _out(mirror, "tcp", port)) == "accept"
    for dns in sets["dns4"]:
        assert verdict(ruleset, "forward", _out(dns, "udp", 53)) == "accept"
        assert verdict(ruleset, "forward", _out(dns, "tcp", 53)) == "accept"


@pytest.mark.parametrize(
    "daddr,proto,dport",
    [
        ("1.1.1.1", "tcp", 443),  # any other web server
        ("8.8.8.8", "udp", 53),  # any other resolver
        ("9.9.9.9", "tcp", 25),  # direct SMTP out: mail must go to the sink
        ("192.0.2.1", "tcp", 22),  # the host's own gateway
        ("10.0.0.1", "tcp", 80),  # private ranges too
    ],
)
def test_everything_else_leaving_the_bridge_is_dropped(ruleset, daddr, proto, dport) -> None:
    assert verdict(ruleset, "forward", _out(daddr, proto, dport)) == "drop"


def test_the_mirror_and_dns_only_on_their_own_ports(ruleset) -> None:
    sets = _sets(ruleset)
    assert verdict(ruleset, "forward", _out(sets["mirror4"][0], "tcp", 22)) == "drop"
    assert verdict(ruleset, "forward", _out(sets["mirror4"][0], "udp", 53)) == "drop"
    assert verdict(ruleset, "forward", _out(sets["dns4"][0], "tcp", 80)) == "drop"


def test_ipv6_leaving_the_bridge_is_dropped(ruleset) -> None:
    pkt = _out("2001:db8::1", "tcp", 443, family="ip6")
    assert verdict(ruleset, "forward", pkt) == "drop"


def test_only_replies_enter_the_bridge_from_outside(ruleset) -> None:
    inbound = {
        "iif": "eth0",
        "oif": BRIDGE,
        "family": "ip",
        "saddr": "198.51.100.7",
        "daddr": MACHINES[0],
        "proto": "tcp",
        "dport": 22,
    }
    assert verdict(ruleset, "forward", {**inbound, "ct_state": "new"}) == "drop"
    assert verdict(ruleset, "forward", {**inbound, "ct_state": "established"}) == "accept"


def test_lab_traffic_is_masqueraded_only_when_leaving_the_bridge(ruleset) -> None:
    out = {**_out("203.0.113.80", "tcp", 80)}
    assert verdict(ruleset, "postrouting", out) == "masquerade"
    inside = {**out, "oif": BRIDGE, "daddr": MACHINES[1]}
    assert verdict(ruleset, "postrouting", inside) == "accept"


@pytest.mark.parametrize("which", ["mirror", "security_mirror"])
def test_every_machine_reaches_its_archive_through_the_nat(lab, lab_ssh, which: str) -> None:
    # The package archives are the one outside destination the rule allows (no proxy).
    for h in lab["hosts"]:
        p = PLATFORMS[h["platform"]]
        suite = p.suite + ("-security" if which == "security_mirror" else "")
        url = f"{getattr(p, which)}/dists/{suite}/Release"
        script = f"import urllib.request as u; print(u.urlopen('{url}', timeout=20).status)"
        out = lab_ssh(h["name"], f'env -u http_proxy python3 -c "{script}"').stdout.strip()
        assert out == "200", (h["name"], url)


# -- shared homes and the kernel-enforced quota ---------------------------------------


def test_test_users_have_the_same_uid_on_every_mail_node(lab, lab_ssh) -> None:
    users = [a["user"] for a in lab["accounts"]]
    seen = {
        n: lab_ssh(n, f"id -u {' '.join(users[:1])}; getent passwd {' '.join(users)}").stdout
        for n in mail_hosts(lab)
    }
    assert len(set(seen.values())) == 1, seen


def test_homes_are_shared_between_mail_nodes(lab, lab_ssh) -> None:
    first, second = mail_hosts(lab)[:2]
    user, token = lab["accounts"][0]["user"], uuid.uuid4().hex
    lab_ssh(first, f"su -s /bin/sh {user} -c 'echo {token} > ~/.shared-probe'")
    try:
        assert lab_ssh(second, f"cat /home/{user}/.shared-probe").stdout.strip() == token
        assert lab_ssh(second, f"stat -c %U /home/{user}/.shared-probe").stdout.strip() == user
    finally:
        lab_ssh(first, f"rm -f /home/{user}/.shared-probe")


def test_home_quota_is_enforced_by_the_kernel_and_can_be_lifted(lab, lab_ssh) -> None:
    user = lab["accounts"][-1]["user"]
    node = mail_hosts(lab)[0]
    dd = f"dd if=/dev/zero of=/home/{user}/.quota-probe bs=1M count=3 conv=fsync"
    write = f"su -s /bin/sh {user} -c '{dd}'"
    assert lab_cli("quota", user, "1M").returncode == 0
    try:
        over = lab_ssh(node, write, check=False)
        assert over.returncode != 0
        assert "Disk quota exceeded" in over.stderr
        lab_ssh(node, f"rm -f /home/{user}/.quota-probe")
        assert lab_cli("quota", user, "none").returncode == 0
        lab_ssh(node, write)
    finally:
        lab_ssh(node, f"rm -f /home/{user}/.quota-probe")
        lab_cli("quota", user, "none")


def test_quota_refuses_an_unknown_user() -> None:
    proc = lab_cli("quota", "mallory", "1M")
    assert proc.returncode != 0
    assert "not a lab test user" in proc.stderr


# -- the outbound-mail sink and the package cache ----------------------------------------


def test_the_sink_keeps_every_message_it_accepts(lab) -> None:
    host, port = lab["sink_smtp"].split(":")
    marker = f"<sink-{uuid.uuid4().hex}@{lab['domain']}>"
    msg = EmailMessage()
    msg["From"], msg["To"] = f"probe@{lab['domain']}", "x@example.org"
    msg["Subject"] = "sink"
    msg["Message-ID"] = marker
    msg.set_content("sink probe\n")
    with smtplib.SMTP(host, int(port), timeout=10) as smtp:
        smtp.send_message(msg)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        hits = [p for p in (Path(lab["sink"]) / "new").iterdir() if marker in p.read_text()]
        if hits:
            assert "X-Sink-Rcpt-To: <x@example.org>" in hits[0].read_text()
            return
        time.sleep(0.2)
    pytest.fail("message not found in the sink")


def apt_proxy(lab) -> str:  # noqa: ANN001
    """The package cache the lab's site file points the machines at."""
    return yaml.safe_load(Path(lab["site_file"]).read_text())["apt_proxy"]


def test_each_package_is_fetched_from_the_mirror_once_for_all_machines(lab) -> None:
    from mailcluster.lab import config

    # The lab host's cache, on its address on the lab network.
    assert apt_proxy(lab) == f"http://{host_address(lab)}:{config.APT_PROXY_PORT}"
    log = Path("/var/lib/mclab/run/apt-proxy-access.log").read_text().splitlines()
    debs: dict[str, list[tuple[str, str]]] = {}
    for line in log:
        client, cache, status, url = line.split()
        if url.endswith(".deb") and status == "200":
            debs.setdefault(url, []).append((client, cache))
    chrony = [u for u in debs if "/chrony_" in u]
    assert chrony, "the deploy installed chrony through the lab's cache"
    # Every machine asked for its platform's chrony (machines added and removed since
    # `up` may have asked too).
    askers = {c for u in chrony for c, _ in debs[u]}
    assert askers >= {h["address"] for h in lab["hosts"]}
    for url, hits in debs.items():
        assert [c for _, c in hits].count("MISS") <= 1, f"{url} fetched twice: {hits}"


def test_the_package_cache_serves_only_the_mirror(lab) -> None:
    import urllib.error
    import urllib.request

    proxy = urllib.request.ProxyHandler({"http": apt_proxy(lab)})
    opener = urllib.request.build_opener(proxy)
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open("http://not-the-mirror.invalid/", timeout=10)  # .invalid: never resolves
    assert refused.value.code == 403


@pytest.mark.parametrize("name", sorted(PLATFORMS))
def test_the_package_cache_serves_every_platforms_archive(lab, name: str) -> None:
    import urllib.request

    p = PLATFORMS[name]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": apt_proxy(lab)}))
    for base, suite in ((p.mirror, p.suite), (p.security_mirror, f"{p.suite}-security")):
        with opener.open(f"{base}/dists/{suite}/Release", timeout=30) as resp:
            assert resp.status == 200
            assert f"Codename: {p.suite}" in resp.read(4096).decode()
