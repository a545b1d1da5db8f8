"""The test clients' one allowance: a second try for Ubuntu 20.04 Dovecot's known hang of
a two-step AUTHENTICATE over TLS (tests/e2e/imap_client.py), and only for that."""

from __future__ import annotations

import pytest

from tests.e2e.imap_client import TwoStepHang, once_more_on_known_hang

LAB = {
    "hosts": [
        {"name": "mail01", "address": "10.0.0.1", "platform": "ubuntu20.04"},
        {"name": "mail02", "address": "10.0.0.2", "platform": "ubuntu24.04"},
    ]
}


def flaky(*outcomes: object):  # noqa: ANN201
    calls = list(outcomes)

    def attempt() -> object:
        result = calls.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result

    return attempt


def test_a_hang_on_a_2_3_7_node_is_tried_once_more_and_warned_about() -> None:
    with pytest.warns(UserWarning, match="4bc94bc7d2"):
        assert once_more_on_known_hang(LAB, "10.0.0.1", flaky(TwoStepHang(), "ok")) == "ok"


def test_a_second_hang_fails() -> None:
    with pytest.warns(UserWarning), pytest.raises(TwoStepHang):
        once_more_on_known_hang(LAB, "10.0.0.1", flaky(TwoStepHang(), TwoStepHang()))


def test_a_hang_elsewhere_fails_at_once() -> None:
    with pytest.raises(TwoStepHang):
        once_more_on_known_hang(LAB, "10.0.0.2", flaky(TwoStepHang(), "ok"))


def test_other_timeouts_fail_at_once() -> None:
    with pytest.raises(TimeoutError):
        once_more_on_known_hang(LAB, "10.0.0.1", flaky(TimeoutError(), "ok"))
