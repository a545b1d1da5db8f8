"""mailctl status's judging (mailcluster/status.py) and its thresholds (site.py); the
conditions themselves are caused on the lab in tests/deploy/test_status.py."""

from __future__ import annotations

import pytest

from mailcluster import site as site_mod
from mailcluster import status

ANSWER = """\
unit chrony active
unit dovecot active
unit exim4 active
unit fail2ban active
chrony Normal
imap_sessions 3
queue 2
age 5m
age 2h
frozen_one
map 0123456789abcdef
bans mailcluster-auth 1
bans sshd 0
end
"""


def host(**kw: object) -> status.HostStatus:
    h = status.HostStatus("mail01", "10.0.0.1", ["mail"], "mail01.example.org")
    status.parse_host_output(h, ANSWER)
    h.reachable = True
    h.cert_days = {"993": 100.0}
    for k, v in kw.items():
        setattr(h, k, v)
    return h


def test_the_answer_is_read_into_figures() -> None:
    h = host()
    assert h.services == {
        "chrony": "active",
        "dovecot": "active",
        "exim4": "active",
        "fail2ban": "active",
    }
    assert (h.imap_sessions, h.queue, h.queue_oldest_s, h.frozen) == (3, 2, 7200, 1)
    assert h.map_id == "0123456789abcdef" and h.bans == {"mailcluster-auth": 1, "sshd": 0}


def test_an_answer_cut_short_is_unknown_not_ok() -> None:
    h = status.HostStatus("mail01", "10.0.0.1", ["mail"])
    with pytest.raises(ValueError):
        status.parse_host_output(h, ANSWER.replace("end\n", ""))
    h.reachable, h.error = True, "unreadable answer"
    found = status.judge([h], site_mod.Monitoring())
    assert status.overall(found) == status.UNKNOWN


@pytest.mark.parametrize(
    "change,level",
    [
        ({}, status.WARNING),  # the frozen message and the 2-hour-old one
        ({"frozen": 0, "queue_oldest_s": 60}, status.OK),
        ({"frozen": 0, "queue_oldest_s": 60, "queue": 101}, status.WARNING),
        ({"frozen": 0, "queue_oldest_s": 60, "queue": 1001}, status.CRITICAL),
        ({"frozen": 0, "queue_oldest_s": 13 * 3600}, status.CRITICAL),
        ({"frozen": 0, "queue_oldest_s": 60, "cert_days": {"993": 20.0}}, status.WARNING),
        ({"frozen": 0, "queue_oldest_s": 60, "cert_days": {"993": 6.9}}, status.CRITICAL),
        ({"frozen": 0, "queue_oldest_s": 60, "cert_days": {"993": None}}, status.CRITICAL),
        ({"frozen": 0, "queue_oldest_s": 60, "chrony": "Not synchronised"}, status.WARNING),
        ({"frozen": 0, "queue_oldest_s": 60, "reachable": False}, status.CRITICAL),
    ],
)
def test_thresholds_give_the_nagios_state(change: dict[str, object], level: int) -> None:
    found = status.judge([host(**change)], site_mod.Monitoring())
    assert status.overall(found) == level, found


def test_a_stopped_service_is_critical_whatever_else() -> None:
    h = host(frozen=0, queue_oldest_s=0)
    h.services["exim4"] = "inactive"
    found = status.judge([h], site_mod.Monitoring())
    assert [(f.level, f.what) for f in found] == [(status.CRITICAL, "exim4 is inactive")]


def test_the_node_whose_map_differs_from_the_majority_is_named() -> None:
    hosts = [host(name=f"mail0{i}", frozen=0, queue_oldest_s=0) for i in (1, 2, 3)]
    hosts[2].map_id = "ffffffffffffffff"
    found = status.judge(hosts, site_mod.Monitoring())
    assert [(f.level, f.host) for f in found] == [(status.CRITICAL, "mail03")]
    # Two nodes that disagree: no majority, both named.
    found = status.judge(hosts[1:], site_mod.Monitoring())
    assert sorted(f.host for f in found) == ["mail02", "mail03"]


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="queue_warning must be below queue_critical"):
        site_mod.Monitoring(queue_warning=10, queue_critical=10)
    with pytest.raises(ValueError, match="cert_days_warning must be above"):
        site_mod.Monitoring(cert_days_warning=7, cert_days_critical=7)


def test_ssh_uses_the_inventorys_connection_data() -> None:
    cmd = status.ssh_command(
        {"ssh_hostname": "10.0.0.1", "ssh_user": "root", "ssh_key": "/k", "ssh_port": 2222},
        "ignored",
    )
    assert cmd[-1] == "root@10.0.0.1" and "-i" in cmd and "2222" in cmd
    assert "BatchMode=yes" in cmd
