"""The tests' own helpers: the test world's end and the one polling helper."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import wait_until, world_end


@pytest.mark.parametrize(
    ("now", "end"),
    [
        (
            datetime(2026, 12, 1, 23, 22, 41, 5, tzinfo=UTC),
            datetime(2026, 12, 1, 23, 5, tzinfo=UTC),
        ),
        (datetime(2026, 12, 2, 0, 4, 59, tzinfo=UTC), datetime(2026, 12, 1, 23, 45, tzinfo=UTC)),
        (datetime(2026, 12, 2, 0, 10, tzinfo=UTC), datetime(2026, 12, 1, 23, 55, tzinfo=UTC)),
    ],
)
def test_world_end_is_now_floored_to_5_minutes_minus_15(now: datetime, end: datetime) -> None:
    assert world_end(now) == end
    # every row created by then: route rows are created 10 minutes after their event time
    assert world_end(now) + timedelta(minutes=10) <= now


def test_wait_until_returns_the_first_truthy_value() -> None:
    calls = itertools.count()
    assert wait_until(lambda: next(calls) >= 3 and "ready", timeout_s=5, interval_s=0) == "ready"


def test_wait_until_fails_naming_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"not within 0\.01 s: the answer \(last: 0\)"):
        wait_until(lambda: 0, timeout_s=0.01, interval_s=0.001, what="the answer")
