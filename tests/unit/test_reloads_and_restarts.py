"""How the deploy reloads and restarts services. mailcluster-reload's order of steps is run
here with stand-ins for ps, pgrep, ss, nft, systemctl and sleep (tests/e2e/test_reload.py
runs the real thing under a stream of logins); a restart is tried once more."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mailcluster import reloads, templating

# The stand-ins log each call to $LOG. ps shows the login processes' titles from
# $STATE/titles for the first $STATE/looks looks (then the clients are done logging in);
# the reload replaces the login processes and the idle imap process. Sleeps other than
# the 0.1 s polls are logged.
FAKES = {
    # "dovecot/imap", exactly (no trailing space): an imap process no login was handed to
    # yet; once it serves one it reads "dovecot/imap [bench007 10.77.0.1]" (both seen
    # with `ps -C imap -o args=` on the lab's mail01 and mail02, Dovecot 2.3.7.2, Ubuntu
    # 20.04, 2026-11-30).
    "ps": """
case "$*" in
  "-C imap-login -o args=")
    n=$(cat "$STATE/n" 2>/dev/null || echo 0); echo $((n + 1)) > "$STATE/n"
    echo "ps titles" >> "$LOG"
    [ "$n" -ge "$(cat "$STATE/looks")" ] || cat "$STATE/titles" ;;
  "-C imap -o pid=,args=") [ -e "$STATE/reloaded" ] || echo "  700 dovecot/imap" ;;
  "-o args= -p 700") [ -e "$STATE/reloaded" ] || echo "dovecot/imap" ;;
esac
""",
    # Exim's auth socket: re-created by the reload (a new inode) unless $STATE/auth_stays
    "ss": """
[ "$*" = "-Hlxn" ] || exit 0
inode=111; [ -e "$STATE/reloaded" ] && [ ! -e "$STATE/auth_stays" ] && inode=222
echo "u_str LISTEN 0 4096 /run/dovecot/auth-exim $inode * 0"
""",
    "pgrep": '[ -e "$STATE/reloaded" ] && echo 201 || echo 101',
    "nft": 'echo "nft $*" >> "$LOG"; if [ "$1" = -f ]; then cat > "$STATE/rules"; fi',
    "systemctl": 'echo "systemctl $*" >> "$LOG"; touch "$STATE/reloaded"',
    "sleep": '[ "$1" = 0.1 ] || echo "sleep $*" >> "$LOG"',
}


def run_script(
    tmp: Path, service: str, titles: str = "", looks: int = 0
) -> tuple[int, list[str], str]:
    bin_dir, state = tmp / "bin", tmp / "state"
    bin_dir.mkdir()
    state.mkdir(exist_ok=True)
    for name, body in FAKES.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    (state / "titles").write_text(titles)
    (state / "looks").write_text(str(looks))
    script = tmp / "mailcluster-reload"
    script.write_text(templating.render("base/reload.sh.j2", **reloads.script_context()))
    log = tmp / "log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.update(STATE=str(state), LOG=str(log))
    proc = subprocess.run(
        ["sh", str(script), service], env=env, capture_output=True, text=True, timeout=30
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return proc.returncode, calls, proc.stderr


# `ps -C imap-login -o args=` as Dovecot 2.3.7.2 (Ubuntu 20.04, verbose_proctitle = yes)
# writes it: seen on the lab's mail01 and mail02 on 2026-11-30, while tests/e2e logged in
# (and, for "[3 pre-login]", with 5 connections from the lab host left before LOGIN).
# A login process without clients ends in a space. 4 logins are under way here: the
# TLS proxy is a client already logged in (its session is relayed to an imap process).
TITLES = (
    "dovecot/imap-login \n"
    "dovecot/imap-login [10.77.0.2 pre-login]\n"
    "dovecot/imap-login [10.77.0.1 TLS proxy]\n"
    "dovecot/imap-login [3 pre-login]\n"
)
# Not seen live (they need logged-in sessions held open): the other forms of 2.3.7.2's
# login_refresh_proctitle() (src/login-common/main.c): several clients as
# "[<pre-login> pre-login + <proxied> proxies + <TLS> TLS proxies]" (each "+" part only
# when not 0); a single one as "[<ip> pre-login]", "[<ip> TLS proxy]" or "[<ip> proxy]".
SOURCE_TITLES = (
    "dovecot/imap-login [2 pre-login + 5 proxies + 1 TLS proxies]\n"
    "dovecot/imap-login [0 pre-login + 3 proxies]\n"
    "dovecot/imap-login [10.77.0.5 proxy]\n"
)


def test_dovecot_reloads_once_the_logins_under_way_are_done_with_new_syns_held(
    tmp_path: Path,
) -> None:
    rc, calls, err = run_script(tmp_path, "dovecot", TITLES, looks=4)
    assert rc == 0, err
    hold = next(i for i, c in enumerate(calls) if c.startswith("nft -f"))
    reload = calls.index("systemctl reload dovecot")
    # four looks see 4 logins under way (0.4 s), the fifth none; then the rest of the
    # second SMTP sessions get to finish their AUTH
    assert calls[hold + 1 : reload] == ["ps titles"] * 5 + ["sleep 0.6"]
    assert calls[0] == "nft delete table inet mailcluster_reload_dovecot"  # a stale one
    assert calls[-1] == "nft delete table inet mailcluster_reload_dovecot"
    assert 0 < hold < reload < len(calls) - 1


def test_logins_that_never_end_delay_the_reload_3_s_at_most(tmp_path: Path) -> None:
    rc, calls, err = run_script(tmp_path, "dovecot", TITLES, looks=1000)
    assert rc == 0, err
    # 30 looks 0.1 s apart, one for the message
    assert calls.count("ps titles") == 30 + 1
    assert "dovecot: 4 logins still under way after 3 s; reloading" in err
    assert "systemctl reload dovecot" in calls


@pytest.mark.parametrize(
    "titles,under_way",
    [
        pytest.param("dovecot/imap-login \ndovecot/imap-login \n", 0, id="no-clients"),
        pytest.param("dovecot/imap-login [10.77.0.2 pre-login]\n", 1, id="one-pre-login"),
        pytest.param("dovecot/imap-login [10.77.0.1 TLS proxy]\n", 0, id="one-tls-proxy"),
        pytest.param(
            "dovecot/imap-login [3 pre-login]\ndovecot/imap-login [2 pre-login]\n",
            5,
            id="several-pre-login",
        ),
        pytest.param(TITLES, 4, id="seen-together"),
        pytest.param(SOURCE_TITLES, 2, id="proxies-from-the-source"),
        pytest.param(TITLES + SOURCE_TITLES, 6, id="all"),
    ],
)
def test_logins_under_way_are_counted_from_dovecots_titles(
    tmp_path: Path, titles: str, under_way: int
) -> None:
    """mailcluster-reload's own parsing (logins_under_way in reload.sh.j2) of the titles
    above: a count above 0 makes it wait (and, the clients never done, say how many)."""
    rc, calls, err = run_script(tmp_path, "dovecot", titles, looks=1000)
    assert rc == 0, err
    hold = next(i for i, c in enumerate(calls) if c.startswith("nft -f"))
    reload = calls.index("systemctl reload dovecot")
    if under_way:
        assert f"dovecot: {under_way} logins still under way after 3 s; reloading" in err
        assert calls[hold + 1 : reload] == ["ps titles"] * 31
    else:  # no wait: one look, then the SMTP sessions' 1 s
        assert "still under way" not in err
        assert calls[hold + 1 : reload] == ["ps titles", "sleep 1.0"]


def test_dovecot_holds_smtp_too_until_exims_auth_socket_is_back(tmp_path: Path) -> None:
    (tmp_path / "back").mkdir()
    rc, calls, err = run_script(tmp_path / "back", "dovecot")
    assert rc == 0, err
    rules = (tmp_path / "back" / "state" / "rules").read_text()
    for port in (143, 993, 25, 465, 587):
        assert f"{port} timeout 30s" in rules
    stays = tmp_path / "stays"
    stays.mkdir()
    (stays / "state").mkdir()
    (stays / "state" / "auth_stays").touch()
    rc, calls, err = run_script(stays, "dovecot")
    assert rc == 1 and "dovecot: the new configuration does not serve after 20 s" in err
    assert calls[-1] == "nft delete table inet mailcluster_reload_dovecot"


def test_exim_is_held_and_released_around_its_reload(tmp_path: Path) -> None:
    rc, calls, err = run_script(tmp_path, "exim4")
    # the stand-ins have no listening sockets to see renewed: it gives up after 20 s
    assert rc == 1 and "exim4: the new daemon is not listening after 20 s" in err
    assert calls[0].startswith("nft delete table inet mailcluster_reload_exim4")
    assert calls[1].startswith("nft -f") and calls[2] == "systemctl reload exim4"
    assert calls[-1] == "nft delete table inet mailcluster_reload_exim4"


def test_an_unknown_service_is_refused_before_anything_is_held(tmp_path: Path) -> None:
    rc, calls, err = run_script(tmp_path, "postfix")
    assert rc == 2 and "usage: mailcluster-reload exim4|dovecot" in err
    assert calls == []


def test_a_restart_is_tried_once_more_and_a_second_failure_still_fails(tmp_path: Path) -> None:
    from mailcluster.ops import restart_with_retry

    tries = tmp_path / "tries"
    flaky = f"echo x >> {tries}; [ $(wc -l < {tries}) -ge 2 ]"  # fails once, then works
    assert subprocess.run(["sh", "-c", restart_with_retry(flaky)]).returncode == 0
    assert tries.read_text().count("x") == 2
    assert subprocess.run(["sh", "-c", restart_with_retry("false")]).returncode != 0
    combined = restart_with_retry("systemctl daemon-reload && systemctl restart chrony")
    assert combined.startswith("{ systemctl daemon-reload && systemctl restart chrony; } ||")
