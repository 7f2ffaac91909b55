"""Prometheus metrics, served over HTTP on their own port.

Per RPC and model: requests by status code and a latency histogram; Redis round-trip
latency; missing and stale features per feature view; the feature cache's hits, misses,
size, invalidations and fallbacks (read from the cache when scraped); prediction log rows
dropped, by reason; PSI and the missing rate per model version and feature of the served
window (serving/monitoring/drift.py, computed when scraped). Label children are
cached so the request path pays one dict lookup and an observe, not a label resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from serving.ingest.metrics import FRESHNESS_BUCKETS_S  # one histogram, two writers
from serving.monitoring.drift import FeaturePsi
from serving.store.feature_cache import CacheStats

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class ServerMetrics:
    """The server's Prometheus metrics; also the `ReadObserver` of its served models."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._requests = Counter(
            "carrara_requests",
            "RPCs by method, model and status code",
            ["method", "model", "code"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "carrara_request_latency_seconds",
            "RPC handling time by method and model",
            ["method", "model"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._redis_latency = Histogram(
            "carrara_redis_roundtrip_seconds",
            "One pipelined Redis read",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._missing = Counter(
            "carrara_missing_features",
            "Feature values absent from Redis, by feature view",
            ["view"],
            registry=self.registry,
        )
        self._stale = Counter(
            "carrara_stale_features",
            "Feature values older than their view's ttl, by view",
            ["view"],
            registry=self.registry,
        )
        self._degraded = Counter(
            "carrara_degraded_predictions",
            "Predict calls scored without the online store (its features missing), by model",
            ["model"],
            registry=self.registry,
        )
        self._log_dropped = Counter(
            "carrara_prediction_log_dropped",
            "Prediction log rows dropped: queue_full (the writer fell behind), write_failed",
            ["reason"],
            registry=self.registry,
        )
        self._freshness = Histogram(
            "carrara_feature_freshness_seconds",
            "Event time to servable time of pushed rows (written, or found older than stored),"
            " by feature view",
            ["view"],
            buckets=FRESHNESS_BUCKETS_S,
            registry=self.registry,
        )
        self._shadow = Counter(
            "carrara_shadow_predictions",
            "Shadow scorings by model and outcome: scored, dropped (queue full), failed",
            ["model", "outcome"],
            registry=self.registry,
        )
        self._routed = Counter(
            "carrara_routed_requests",
            "Predict calls of a model's production alias by the role that answered them "
            "(primary or canary) and its version",
            ["model", "role", "version"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, ...], object] = {}
        self._http: Any = None  # the /metrics HTTP server, once started

    def count_shadow(self, model: str, outcome: str) -> None:
        self._shadow.labels(model, outcome).inc()

    def count_routed(self, model: str, role: str, version: str) -> None:
        key = ("route", model, role, version)
        counter = self._children.get(key)
        if counter is None:
            counter = self._children[key] = self._routed.labels(model, role, version)
        counter.inc()  # type: ignore[attr-defined]

    def observe_freshness(self, view: str, ages_s: Iterable[float]) -> None:
        histogram = self._freshness.labels(view)
        for age in ages_s:
            histogram.observe(age)

    def observe(self, method: str, model: str, code: str, seconds: float) -> None:
        key = ("rq", method, model, code)
        counter = self._children.get(key)
        if counter is None:
            counter = self._children[key] = self._requests.labels(method, model, code)
        counter.inc()  # type: ignore[attr-defined]
        histogram = self._children.get(("lat", method, model, ""))
        if histogram is None:
            histogram = self._children[("lat", method, model, "")] = self._latency.labels(
                method, model
            )
        histogram.observe(seconds)  # type: ignore[attr-defined]

    def observe_read(self, seconds: float) -> None:
        self._redis_latency.observe(seconds)

    def count_degraded(self, model: str) -> None:
        self._degraded.labels(model).inc()

    def count_missing(self, view: str, missing: int, stale: int) -> None:
        if missing:
            self._missing.labels(view).inc(missing)
        if stale:
            self._stale.labels(view).inc(stale)

    def count_log_dropped(self, reason: str, rows: int) -> None:
        self._log_dropped.labels(reason).inc(rows)

    def watch_drift(self, psi: Callable[[], Iterable[FeaturePsi]]) -> None:
        """Export PSI per served model version and feature, computed at scrape time."""
        self.registry.register(_DriftCollector(psi))

    def watch_feature_cache(self, stats: Callable[[], CacheStats]) -> None:
        """Export the feature cache's counters, read at scrape time (nothing per request)."""
        self.registry.register(_FeatureCacheCollector(stats))

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint; returns the bound port (0 picks a free one)."""
        self._http, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        """Stop the /metrics endpoint, if it was started."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _FeatureCacheCollector(Collector):
    def __init__(self, stats: Callable[[], CacheStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        s = self._stats()
        prefix = "carrara_feature_cache"
        yield CounterMetricFamily(f"{prefix}_hits", "Keys read from the cache", s.hits)
        yield CounterMetricFamily(
            f"{prefix}_misses", "Keys read from Redis while the cache was on", s.misses
        )
        yield CounterMetricFamily(
            f"{prefix}_invalidations", "Keys named by Redis invalidations", s.invalidated_keys
        )
        yield CounterMetricFamily(
            f"{prefix}_fallbacks",
            "Outages of the invalidation channel (or tracking refused): reads went to Redis",
            s.fallbacks,
        )
        yield GaugeMetricFamily(f"{prefix}_entries", "Redis keys cached", s.entries)
        yield GaugeMetricFamily(f"{prefix}_capacity", "Redis keys the cache may hold", s.capacity)
        yield GaugeMetricFamily(f"{prefix}_live", "1 while the cache is coherent and used", s.live)


class _DriftCollector(Collector):
    def __init__(self, psi: Callable[[], Iterable[FeaturePsi]]) -> None:
        self._psi = psi

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["model", "version", "feature"]
        psi = GaugeMetricFamily(
            "carrara_feature_psi",
            "PSI of served feature values (the rolling window) against the training rows; "
            "0.1 warn, 0.2 alert",
            labels=labels,
        )
        missing = GaugeMetricFamily(
            "carrara_feature_missing_ratio",
            "Share of the rolling window's values missing (absent, stale or degraded)",
            labels=labels,
        )
        for item in self._psi():
            psi.add_metric([item.model, item.version, item.feature], item.psi)
            missing.add_metric([item.model, item.version, item.feature], item.missing_rate)
        yield psi
        yield missing
