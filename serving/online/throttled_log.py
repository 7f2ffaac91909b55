"""Warnings that repeat at request rate, logged once per interval with a count.

During a Redis outage every call fails the same way; a log line per call would bury the log
(and the disk) under one message. A `ThrottledLog` logs a key's first failure, then at most one
line per `interval_s` saying how many were suppressed, and (for a key that can recover, like
the store or a model) one line when it succeeds again. The success path costs one truth test
while nothing is failing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_KEYS = 1_000


@dataclass
class _Failing:
    first_s: float
    logged_s: float
    failures: int = 1
    suppressed: int = 0


class ThrottledLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._clock = clock
        self._failing: dict[str, _Failing] = {}  # keys that log a line on recovery
        self._repeating: dict[str, _Failing] = {}  # keys that do not (a caller's mistakes)
        self._lock = threading.Lock()

    @property
    def failing(self) -> bool:
        return bool(self._failing)

    def warning(self, key: str, message: str, *args: object, recovers: bool = True) -> None:
        now = self._clock()
        states = self._failing if recovers else self._repeating
        with self._lock:
            state = states.get(key)
            if state is None:
                if len(self._repeating) > MAX_KEYS:  # keys may come from clients: bounded
                    self._repeating.clear()
                states[key] = _Failing(now, now)
                suffix = ""
            else:
                state.failures += 1
                if now - state.logged_s < self._interval_s:
                    state.suppressed += 1
                    return
                suffix = f" ({state.suppressed:,} more like it since the last line)"
                state.logged_s, state.suppressed = now, 0
        self._log.warning(message + suffix, *args)

    def ok(self, key: str) -> None:
        """`key` succeeded: if it was failing, one line says so."""
        with self._lock:
            state = self._failing.pop(key, None)
        if state is not None:
            self._log.warning(
                "%s: recovered after %s failures in %.1f s",
                key,
                f"{state.failures:,}",
                self._clock() - state.first_s,
            )
