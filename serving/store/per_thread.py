"""One object per thread, made on first use, every one of them reachable for closing.

For what must not be shared between server threads but should outlive a request: a Redis
connection and its reply parser (connection.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerThread(Generic[T]):
    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._local = threading.local()
        self._made: list[T] = []
        self._lock = threading.Lock()  # guards _made, not the objects

    def get(self) -> T:
        """The calling thread's object, made now if it has none."""
        mine: T | None = getattr(self._local, "value", None)
        if mine is None:
            mine = self._local.value = self._make()
            with self._lock:
                self._made.append(mine)
        return mine

    def every(self) -> list[T]:
        """All objects made so far, whichever thread holds them."""
        with self._lock:
            return list(self._made)
