"""The prediction log's request-path side: a record per Predict, handed off without waiting.

The servicer builds a `PredictionRecord` from what it already holds (the typed request
columns, the model's input matrix, the predictions: references, no copies, no formatting)
and `offer`s it to the `PredictionTap`. The tap is a bounded deque: when it is full the record
is dropped and counted, so a request never waits on the log. A thread of the tap's own drains
it every `drain_interval_s` and hands the records to its consumers (parquet_log.py writes
them; drift.py keeps the served windows); a consumer that fails is logged (rate-limited) and
never stops the thread.

A record is one request; its rows become one logged row each. `role` is "primary" for the
version that answered (shadow and canary versions, when they come, log "shadow" / "canary"
with the primary's request id). Imports no pandas or pyarrow.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 10_000  # records (requests) waiting for the writer thread
DRAIN_INTERVAL_S = 0.2
FAILURE_LOG_INTERVAL_S = 60.0
REQUEST_ID_CHARS = 100  # a caller's request id is cut to this


# Not frozen: a frozen dataclass's __init__ costs ~2 µs more, on the request path. Nothing
# changes a record after it is made.
@dataclass(slots=True)
class PredictionRecord:
    request_id: str
    time_s: float  # epoch seconds, when the reply was built
    model: str
    version: str
    alias: str  # which alias routed it ("production", "staging"); "" for "name:version"
    role: str  # "primary" (the version that answered), later "shadow" / "canary"
    entities: Mapping[str, Sequence[Any]]  # join key -> one value per row
    request_data: Mapping[str, Sequence[Any]]  # request field -> one value per row
    feature_names: tuple[str, ...]  # the model's input order
    features: np.ndarray  # (rows, features), NaN = missing (absent, stale or not computed)
    predictions: np.ndarray  # (rows,)
    missing: np.ndarray  # (rows,) the reply's missing_features
    degraded: bool
    latency_ms: float  # from the request's arrival to its reply, as the server saw it
    # (rows, features) the read's reads.Status per stored feature (MISSING 0, PRESENT 1,
    # STALE 2); None: judged from NaN alone
    status: np.ndarray | None = None


class RecordConsumer(Protocol):
    def consume(self, records: Sequence[PredictionRecord]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class RequestIds:
    """Request ids for callers that send none: a per-process random prefix and a counter
    (unique across processes and restarts, and cheaper than a uuid per request)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}-{next(self._counter)}"


class PredictionTap:
    def __init__(
        self,
        consumers: Sequence[RecordConsumer],
        on_drop: Callable[[str, int], None],  # (reason, rows): the metrics' counter
        sample_rate: float = 1.0,
        capacity: int = DEFAULT_CAPACITY,
        drain_interval_s: float = DRAIN_INTERVAL_S,
    ) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError("the log sample rate must be above 0 and at most 1")
        self.consumers = tuple(consumers)
        self.sample_rate = sample_rate
        self.ids = RequestIds()
        self._on_drop = on_drop
        self._capacity = capacity
        self._queue: deque[PredictionRecord] = deque()
        self._interval_s = drain_interval_s
        self._lock = threading.Lock()  # one drain at a time: the thread's or a flush's
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures: dict[int, float] = {}  # consumer index -> when its failure was logged
        self.dropped = 0

    def sampled(self) -> bool:
        return self.sample_rate >= 1.0 or random.random() < self.sample_rate

    def offer(self, record: PredictionRecord) -> None:
        """Queue `record`, or drop and count it when the queue is full. Never blocks."""
        if len(self._queue) >= self._capacity:
            self.dropped += 1
            self._on_drop("queue_full", len(record.predictions))
            return
        self._queue.append(record)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="carrara-log", daemon=True)
        self._thread.start()

    def flush(self) -> None:
        """Drain the queue and have every consumer write what it holds (tests, shutdown)."""
        with self._lock:
            self._drain()
            self._each("flush", lambda c: c.flush())

    def close(self) -> None:
        """Stop the thread, drain what is queued, close the consumers (files closed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            self._drain()
            self._each("close", lambda c: c.close())

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            with self._lock:
                self._drain()

    def _drain(self) -> None:
        records = []
        queue = self._queue
        while queue:
            records.append(queue.popleft())
        self._each("consume", lambda c: c.consume(records))

    def _each(self, what: str, call: Callable[[RecordConsumer], None]) -> None:
        for index, consumer in enumerate(self.consumers):
            try:
                call(consumer)
            except Exception:  # the log's thread must outlive any one consumer's fault
                now = time.monotonic()
                if now - self._failures.get(index, -FAILURE_LOG_INTERVAL_S) >= (
                    FAILURE_LOG_INTERVAL_S
                ):
                    self._failures[index] = now
                    log.exception(
                        "prediction log: %s failed in %s (logged at most once a minute)",
                        what,
                        type(consumer).__name__,
                    )
