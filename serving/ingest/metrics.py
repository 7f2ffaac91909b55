"""The ingester's Prometheus metrics (`carrara ingest --metrics-port`).

Entries taken, rows written and found older than stored, dead letters and reconnects, per
stream; and the time from each written row's event time to its write, per feature view, as
the server's `carrara_feature_freshness_seconds` histogram (the same name and buckets, so one
dashboard panel shows both paths).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

FRESHNESS_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 3600)


class IngestMetrics:
    def __init__(self, stream: str) -> None:
        self.registry = CollectorRegistry()
        self._stream = stream
        counters = {
            "events": "Stream entries taken, redeliveries included",
            "rows_written": "Rows written to the online store",
            "rows_older_than_stored": "Rows not written: a newer row was stored",
            "dead_letters": "Entries sent to the dead-letter stream",
            "reconnects": "Retries while Redis was unavailable",
        }
        self._counters = {
            name: Counter(f"carrara_ingest_{name}", text, ["stream"], registry=self.registry)
            for name, text in counters.items()
        }
        self._freshness = Histogram(
            "carrara_feature_freshness_seconds",
            "Event time to servable time of ingested rows (written, or found older than "
            "stored), by feature view",
            ["view"],
            buckets=FRESHNESS_BUCKETS_S,
            registry=self.registry,
        )
        self._http: Any = None

    def count(self, name: str, amount: int = 1) -> None:
        if amount:
            self._counters[name].labels(self._stream).inc(amount)

    def observe_freshness(self, view: str, ages_s: Iterable[float]) -> None:
        histogram = self._freshness.labels(view)
        for age in ages_s:
            histogram.observe(age)

    def serve(self, host: str, port: int) -> int:
        """Start /metrics; returns the bound port (0 picks a free one)."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
