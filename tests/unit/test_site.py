"""The site schema: a bad value stops the run with file, field and problem named."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailcluster import site
from tests.conftest import REPO, pyinfra

LOOPBACK = REPO / "tests" / "fixtures" / "sites" / "loopback.yaml"


@pytest.fixture
def data() -> dict[str, Any]:
    return yaml.safe_load(LOOPBACK.read_text())


def error_for(data: dict[str, Any]) -> str:
    with pytest.raises(site.SiteError) as exc:
        site.parse(data, "site.yaml")
    return str(exc.value)


def test_the_production_site_file_is_valid_and_has_20_hosts() -> None:
    s = site.load(REPO / "group_data" / "site.yaml")
    assert len(s.hosts) == 20
    assert {g: len(h) for g, h in s.groups().items()} == {"mail": 16, "webmail": 3, "db": 1}


def test_defaults_come_from_the_schema(data) -> None:
    s = site.parse(data, "site.yaml")
    assert s.timezone == "Asia/Tokyo"
    assert s.attachment_max_bytes == 2 * 1024 * 1024
    assert s.unattended_upgrades is True


@pytest.mark.parametrize(
    "mutate,field,problem",
    [
        (
            lambda d: d["hosts"][1].update(address="10.0.0.300"),
            "hosts[1].address",
            "not a valid IPv4 address (got '10.0.0.300')",
        ),
        (lambda d: d["hosts"][0].update(name="Mail_01"), "hosts[0].name", "not a host name"),
        (lambda d: d["hosts"][0].update(groups=["mial"]), "hosts[0].groups[0]", "'mial'"),
        (lambda d: d["hosts"][0].update(groups=[]), "hosts[0].groups", "at least 1 item"),
        (lambda d: d.update(domain="localhost"), "domain", "not a fully qualified domain name"),
        (lambda d: d.pop("ntp_servers"), "ntp_servers", "Field required"),
        (lambda d: d.update(ntp_server=["x"]), "ntp_server", "Extra inputs are not permitted"),
        (lambda d: d.update(timezone="Tokyo time"), "timezone", "not a tz database name"),
        (lambda d: d.update(attachment_max_bytes=0), "attachment_max_bytes", "greater than 0"),
        (lambda d: d.update(apt_proxy="cache:3142"), "apt_proxy", "not an http://host:port URL"),
        (lambda d: d["tls"].update(key="privkey.pem"), "tls.key", "absolute path"),
        (
            lambda d: d["tls"].update(key=str(REPO / "privkey.pem")),
            "tls.key",
            "must not point into the repository",
        ),
        (
            lambda d: d["hosts"].append(dict(d["hosts"][0], address="127.0.0.9")),
            "hosts",
            "duplicate name mail01",
        ),
        (
            lambda d: d.update(hosts=[h for h in d["hosts"] if "webmail" not in h["groups"]]),
            "hosts",
            "no host in group 'webmail'",
        ),
    ],
)
def test_a_bad_value_is_reported_with_file_field_and_problem(data, mutate, field, problem) -> None:
    bad = copy.deepcopy(data)
    mutate(bad)
    message = error_for(bad)
    line = next((ln for ln in message.splitlines() if ln.startswith(f"site.yaml: {field}: ")), "")
    assert line, message
    assert problem in line, message


def test_every_problem_is_reported_at_once(data) -> None:
    data["hosts"][0]["address"] = "x"
    data["domain"] = "nodots"
    assert len(error_for(data).splitlines()) == 2


def test_unreadable_and_malformed_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(site.SiteError, match="missing.yaml: cannot read"):
        site.load(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("domain: [unclosed\n")
    with pytest.raises(site.SiteError, match="broken.yaml: not valid YAML"):
        site.load(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(site.SiteError, match=r"list.yaml: \(top level\): expected a mapping"):
        site.load(listy)


def test_site_check_command_exits_2_on_a_bad_file(tmp_path: Path, data, capsys) -> None:
    data["hosts"][0]["address"] = "nowhere"
    bad = tmp_path / "site.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert site.main([str(bad)]) == 2
    assert f"{bad}: hosts[0].address:" in capsys.readouterr().err
    assert site.main([str(LOOPBACK)]) == 0


def test_an_invalid_site_stops_pyinfra_before_any_host_is_touched(tmp_path: Path, data) -> None:
    data["hosts"][2]["address"] = "127.0.0.256"
    bad = tmp_path / "site.yaml"
    bad.write_text(yaml.safe_dump(data))
    proc = pyinfra("inventory/production.py", "deploy.py", env={"MAILCLUSTER_SITE": str(bad)})
    assert proc.returncode == 2
    assert f"{bad}: hosts[2].address: Input is not a valid IPv4 address" in proc.stderr
    assert "Connecting to hosts" not in proc.stdout + proc.stderr


def test_production_inventory_groups_come_from_the_site_file(monkeypatch) -> None:
    import runpy

    monkeypatch.delenv(site.SITE_ENV, raising=False)
    inv = runpy.run_path(str(REPO / "inventory" / "production.py"))  # as pyinfra execs it
    names = {g: [name for name, _ in inv[g]] for g in ("mail", "webmail", "db")}
    assert names["mail"] == [f"mail{i:02d}" for i in range(1, 17)]
    assert names["webmail"] == ["webmail01", "webmail02", "webmail03"]
    assert names["db"] == ["db01"]
    assert dict(inv["mail"])["mail03"]["ssh_hostname"] == "10.20.1.13"
    assert site.selected_path() == REPO / "group_data" / "site.yaml"


def test_a_failed_node_holds_no_mail_and_only_its_users_move(data, tmp_path: Path) -> None:
    data["secrets_dir"] = str(tmp_path)
    first = next(h["name"] for h in data["hosts"] if "mail" in h["groups"])
    data["backend_overrides"] = {"pinned": first}
    s = site.parse(data, "test")
    users = [f"user{i}" for i in range(300)]
    before = {u: s.backend_of(u) for u in users}
    victim = before["user0"]
    (tmp_path / site.FAILED_NODES_FILE).write_text(f"{victim}\nnot-a-node\n")
    assert s.failed_nodes() == [victim]
    assert victim not in s.backend_nodes()
    after = {u: s.backend_of(u) for u in users}
    moved = [u for u in users if after[u] != before[u]]
    assert moved and all(before[u] == victim for u in moved)
    assert not any(b == victim for b in after.values())
    # An override naming the failed node gives way to the user's next choice.
    (tmp_path / site.FAILED_NODES_FILE).write_text(f"{first}\n")
    assert s.backend_of("pinned") != first


def test_an_os_upgrade_plan_shapes_the_map(data, tmp_path: Path) -> None:
    """While secrets_dir/upgrade.json exists: a new node holds mail only once its batch
    has joined, a replaced old node holds none, and users follow the plan's pins."""
    from mailcluster import upgrade_plan

    data["secrets_dir"] = str(tmp_path)
    mail = [h for h in data["hosts"] if "mail" in h["groups"]]
    old = mail[0]["name"]
    data["hosts"].append({"name": "mailnew", "address": "127.0.9.9", "groups": ["mail"]})
    s = site.parse(data, "test")
    plan = upgrade_plan.Plan(target="ubuntu24.04", pairs=[(old, "mailnew")])
    upgrade_plan.save(tmp_path, plan)
    assert old in s.backend_nodes() and "mailnew" not in s.backend_nodes()
    users = [f"user{i}" for i in range(300)]
    assert all(s.backend_of(u) != "mailnew" for u in users)
    before = {u: s.backend_of(u) for u in users}
    plan.pins = plan.pins_for_batch(before, plan.batches()[0], s.backend_nodes() + ["mailnew"])
    plan.steps[old] = "joined"
    upgrade_plan.save(tmp_path, plan)
    assert old not in s.backend_nodes() and "mailnew" in s.backend_nodes()
    after = {u: s.backend_of(u) for u in users}
    assert after == plan.pins
    assert {u for u in users if after[u] != before[u]} == {u for u in users if before[u] == old}
    upgrade_plan.remove(tmp_path)
    assert "mailnew" in s.backend_nodes() and old in s.backend_nodes()
