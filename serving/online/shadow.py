"""Shadow scoring: a version scored on the primary's feature vector after the reply is sent.

The model's `shadow` alias (serving/models/aliases.py) names a version that never answers:
for its share of the logged Predict calls of the production alias, the primary's record
(its request id, entities, request data and the very feature matrix the primary scored: no
second Redis read) is queued here, and one thread scores it with the shadow's scorer and logs
it with role "shadow". The request path only queues (a full queue drops and counts); a shadow
that fails is logged, counted and never reaches a caller.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from serving.monitoring.prediction_log import PredictionRecord, PredictionTap
from serving.online.throttled_log import ThrottledLog

if TYPE_CHECKING:
    from serving.inference.served_model import ServedModel
    from serving.online.metrics import ServerMetrics

log = logging.getLogger(__name__)
QUEUE_CAPACITY = 1_024  # primary records waiting for their shadow


class ShadowScorer:
    def __init__(
        self, tap: PredictionTap, metrics: ServerMetrics, capacity: int = QUEUE_CAPACITY
    ) -> None:
        self._tap = tap
        self._metrics = metrics
        self._queue: queue.Queue[tuple[ServedModel, PredictionRecord] | None] = queue.Queue(
            capacity
        )
        self._throttled = ThrottledLog(log)
        self._thread = threading.Thread(target=self._run, name="carrara-shadow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, shadow: ServedModel, primary: PredictionRecord) -> None:
        """Queue the shadow's scoring of `primary`'s rows; never waits."""
        try:
            self._queue.put_nowait((shadow, primary))
        except queue.Full:
            self._metrics.count_shadow(shadow.name, "dropped")

    def close(self, timeout_s: float = 10.0) -> None:
        """Score what is queued, then stop (before the log closes: its records are logged)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:  # until close() queues None
            item = self._queue.get()
            if item is None:
                return
            shadow, primary = item
            try:
                self._score(shadow, primary)
            except Exception as exc:  # a shadow never fails anything but itself
                self._metrics.count_shadow(shadow.name, "failed")
                self._throttled.warning(
                    f"shadow {shadow.name}",
                    "shadow %s:%s failed on request %s: %r",
                    *(shadow.name, shadow.version, primary.request_id, exc),
                    recovers=False,
                )

    def _score(self, shadow: ServedModel, primary: PredictionRecord) -> None:
        started = time.perf_counter()
        predictions = shadow.scorer.score(primary.features)
        self._tap.offer(
            replace(
                primary,
                version=shadow.version,
                alias="shadow",
                role="shadow",
                predictions=predictions,
                latency_ms=(time.perf_counter() - started) * 1e3,
            )
        )
        self._metrics.count_shadow(shadow.name, "scored")
