"""PerThread: one object per thread, the same one on every call, all of them listed."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from serving.store.per_thread import PerThread


def test_each_thread_gets_its_own_object_and_keeps_it() -> None:
    made = PerThread(object)
    barrier = threading.Barrier(4)

    def twice(_: int) -> tuple[int, int]:
        barrier.wait()  # all four threads alive at once: none can reuse another's
        return id(made.get()), id(made.get())

    with ThreadPoolExecutor(4) as pool:
        pairs = list(pool.map(twice, range(4)))
    assert all(first == second for first, second in pairs)
    assert len({first for first, _ in pairs}) == 4
    assert sorted(id(o) for o in made.every()) == sorted(first for first, _ in pairs)
