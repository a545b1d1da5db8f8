"""The diff of a secret-bearing file: which lines change, nothing of what they hold."""

from __future__ import annotations

from mailcluster.ops import redacted_diff


def test_it_names_the_changed_lines_and_shows_no_content() -> None:
    old = ["# header", "alice:{CRAM-MD5}aaaa", "bob:{CRAM-MD5}bbbb", "# end"]
    new = [
        "# header",
        "alice:{CRAM-MD5}cccc",
        "bob:{CRAM-MD5}bbbb",
        "carol:{CRAM-MD5}dddd",
        "# end",
    ]
    out = redacted_diff(old, new)
    assert out == [
        "4 lines live, 5 lines new",
        "replace: line 2 (live) -> line 2 (new)",
        "insert: none (live) -> line 4 (new)",
    ]
    text = "\n".join(out)
    for secret in ("aaaa", "bbbb", "cccc", "dddd", "alice", "CRAM"):
        assert secret not in text


def test_a_new_file_is_all_inserted_lines() -> None:
    assert redacted_diff([], ["a", "b"]) == [
        "0 lines live, 2 lines new",
        "insert: none (live) -> lines 1-2 (new)",
    ]
