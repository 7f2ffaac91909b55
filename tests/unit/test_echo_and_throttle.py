"""Client strings are cut in messages; repeated warnings are logged once per interval."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serving.errors import ECHO_CHARS, echo
from serving.online.throttled_log import ThrottledLog


@given(st.text(max_size=3 * ECHO_CHARS))
def test_echo_is_bounded_and_states_the_full_length(text: str) -> None:
    shown = echo(text)
    assert len(shown) <= len(repr(text[:ECHO_CHARS])) + 40
    if len(text) <= ECHO_CHARS:
        assert shown == repr(text)
    else:
        assert shown.startswith(repr(text[:ECHO_CHARS]))
        assert shown.endswith(f"({len(text):,} characters)")


def test_echo_of_a_huge_string_is_short() -> None:
    assert len(echo("x" * 3_000_000)) < 150


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_repeated_warning_is_logged_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    throttled = ThrottledLog(logging.getLogger("t"), interval_s=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t"):
        for second in range(25):  # one failure per second, 25 in all
            clock.now = float(second)
            throttled.warning("store", "down: %s", "refused")
        clock.now = 30.0
        throttled.ok("store")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "down: refused",
        "down: refused (9 more like it since the last line)",
        "down: refused (9 more like it since the last line)",
        "store: recovered after 25 failures in 30.0 s",
    ]


def test_ok_without_failures_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    throttled = ThrottledLog(logging.getLogger("t"), clock=Clock())
    with caplog.at_level(logging.WARNING, logger="t"):
        throttled.ok("store")
    assert not caplog.records
    assert not throttled.failing


def test_callers_mistakes_are_throttled_but_never_recover(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    throttled = ThrottledLog(logging.getLogger("t"), interval_s=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t"):
        for _ in range(100):
            throttled.warning("Predict model=other INVALID_ARGUMENT", "bad", recovers=False)
    assert len(caplog.records) == 1
    assert not throttled.failing  # the success path stays a truth test
