"""Password hashes and the user -> backend map, without a machine."""

from __future__ import annotations

import stat
from collections import Counter
from pathlib import Path

import pytest

from mailcluster import accounts, sizing


@pytest.mark.parametrize(
    "password,expected",
    [  # `doveadm pw -s CRAM-MD5 -p ...` on Dovecot 2.3.19
        ("secret pass", "5c5e8dbd10626a25499ee4907c5f7dad2991f6e2093c44f0f7f8732802e3a963"),
        ("", "00747cf2ffaf11c5ea4a64979c3901fc1d20dee13f480bb598f7d8575b23e61b"),
    ],
)
def test_cram_md5_hash_matches_doveadm(password: str, expected: str) -> None:
    assert accounts.cram_md5_hash(password) == "{CRAM-MD5}" + expected


# `doveadm -O pw -s CRAM-MD5 -p <password>` on Dovecot 2.3.7.2 (Ubuntu 20.04, the Vagrant
# mail01), 2026-11-30. HMAC-MD5 hashes a key longer than 64 bytes with MD5 first: bytes,
# not characters, count (the non-ASCII passwords are UTF-8).
@pytest.mark.parametrize(
    "password,expected",
    [
        pytest.param(
            "a" * 64,
            "6957714d5e68e79c4af1e64841006d9a695110dd110308dabf8a187ea80da0bc",
            id="64-bytes-the-longest-key-used-as-is",
        ),
        pytest.param(
            "a" * 65,
            "b2cd8008bd902fd6febd4776452458261cc5aa16cb564c22a27db9c098233e63",
            id="65-bytes-hashed-first",
        ),
        pytest.param(
            "x" * 100,
            "52197db948d0932512a61b183e7d05b04e94d60a3bb0d00f92d3df52a5d275ca",
            id="100-bytes",
        ),
        pytest.param(
            "Tr0ub4dor&3!" * 20,
            "c7cdec22234952aacfc2eecec6c5259310c2602ba89f72650c535318a4a1bf9d",
            id="240-bytes",
        ),
        pytest.param(
            "correct horse battery staple " * 8,
            "38bb440149bb1088ca85e57180588c75a64a64951b117b91fb6c3e4254d31579",
            id="232-bytes-with-spaces-and-a-trailing-one",
        ),
        pytest.param(
            "é" * 33,
            "bf52221ebccc0f7f524a5026619bf3e762750ae1a97e0fd0b05cc7ad7c8b17f8",
            id="33-characters-66-bytes",
        ),
        pytest.param(
            "pässwörd-日本語-🔑",
            "6b583c1e54868fce1d4ae4a8b998db89284199dd3067519d5681f46b4a340dfd",
            id="non-ascii-25-bytes",
        ),
        pytest.param(
            "日本語のパスワード🔑" * 4,
            "29f27ed3ef10b6ebf0b32aae1a6bb262a75c6abe46f9aa5d101714d36e26ecee",
            id="non-ascii-40-characters-124-bytes",
        ),
        pytest.param(
            'it\'s a "quoted" pass word with $HOME, `backticks` and \\ back\\slashes',
            "7c380f38689f8f25c636826288fc55ae3eb9f781e88195310599ce592cd1f3d8",
            id="quotes-dollar-backticks-backslashes-68-bytes",
        ),
        pytest.param(
            "  spaces around  ",
            "89a944b00633934d2526c0523b2721f1ad3fe92fb4a03a47eeeb2ff9cc6def3a",
            id="leading-and-trailing-spaces",
        ),
    ],
)
def test_cram_md5_hash_of_long_and_unusual_passwords_matches_doveadm(
    password: str, expected: str
) -> None:
    assert accounts.cram_md5_hash(password) == "{CRAM-MD5}" + expected


USERS = [f"user{i:05d}" for i in range(20000)]


def test_backend_map_is_stable_and_deterministic() -> None:
    nodes = [f"mail{i:02d}" for i in range(1, 17)]
    first = [accounts.backend_for(u, nodes) for u in USERS[:500]]
    assert first == [accounts.backend_for(u, list(reversed(nodes))) for u in USERS[:500]]


def test_backend_map_is_balanced() -> None:
    nodes = [f"mail{i:02d}" for i in range(1, 17)]
    counts = Counter(accounts.backend_for(u, nodes) for u in USERS)
    mean = len(USERS) / len(nodes)
    assert set(counts) == set(nodes)
    assert all(abs(c - mean) < 0.1 * mean for c in counts.values()), counts


def test_adding_a_node_moves_about_one_in_n_users_and_only_to_it() -> None:
    before = [f"mail{i:02d}" for i in range(1, 17)]
    after = [*before, "mail17"]
    moved = [u for u in USERS if accounts.backend_for(u, before) != accounts.backend_for(u, after)]
    assert all(accounts.backend_for(u, after) == "mail17" for u in moved)
    assert abs(len(moved) / len(USERS) - 1 / 17) < 0.01


def test_removing_a_node_moves_only_its_users() -> None:
    before = [f"mail{i:02d}" for i in range(1, 17)]
    after = [n for n in before if n != "mail05"]
    for u in USERS[:3000]:
        if accounts.backend_for(u, before) != "mail05":
            assert accounts.backend_for(u, after) == accounts.backend_for(u, before)


def test_an_override_pins_a_user() -> None:
    assert accounts.backend_for("alice", ["mail01", "mail02"], {"alice": "mail02"}) == "mail02"


def test_password_store_round_trip_is_private(tmp_path: Path) -> None:
    hashes = {"bob": accounts.cram_md5_hash("b0bpassword"), "alice": accounts.cram_md5_hash("x")}
    accounts.write_passwords(tmp_path / "secrets", hashes)
    assert accounts.read_passwords(tmp_path / "secrets") == hashes
    mode = stat.S_IMODE(accounts.passwords_file(tmp_path / "secrets").stat().st_mode)
    assert mode == 0o600


def test_a_corrupt_store_names_file_and_line(tmp_path: Path) -> None:
    accounts.passwords_file(tmp_path).write_text("alice:{PLAIN}secret\n")
    with pytest.raises(ValueError, match=r"imap-passwords:1: expected"):
        accounts.read_passwords(tmp_path)


def test_a_production_node_accepts_at_least_4000_imap_sessions() -> None:
    limits = sizing.dovecot(vcpus=4, memory_mb=8192)
    assert limits.imap_process_limit >= 4000
    assert limits.login_processes * limits.login_client_limit >= limits.imap_process_limit
    assert limits.default_client_limit > limits.imap_process_limit
    assert "8192 MB" in limits.why["imap_process_limit"]
    # imap-login's address space holds every proxied session it may take (~0.3 MiB each).
    assert limits.login_vsz_mb >= limits.login_client_limit * 0.35


def test_a_small_machine_keeps_a_floor() -> None:
    assert sizing.dovecot(vcpus=1, memory_mb=512).imap_process_limit == sizing.IMAP_MIN_SESSIONS


def _slow_change(secrets_dir: str, user: str) -> None:
    """A read-modify-write of the store with a pause in the middle (a slow machine)."""
    import time

    with accounts.locked(Path(secrets_dir)):
        hashes = accounts.read_passwords(Path(secrets_dir))
        time.sleep(0.05)
        hashes[user] = accounts.cram_md5_hash(f"password-of-{user}")
        accounts.write_passwords(Path(secrets_dir), hashes)


def test_concurrent_changes_to_the_store_under_its_lock_lose_nothing(tmp_path) -> None:
    import multiprocessing

    users = [f"user{i}" for i in range(10)]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_slow_change, args=(str(tmp_path), u)) for u in users]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    stored = accounts.read_passwords(tmp_path)
    assert stored == {u: accounts.cram_md5_hash(f"password-of-{u}") for u in users}
