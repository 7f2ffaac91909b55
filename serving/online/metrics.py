"""Prometheus metrics, served over HTTP on their own port.

Per RPC and model: requests by status code and a latency histogram; Redis round-trip
latency; missing and stale features per feature view. Label children are cached so the
request path pays one dict lookup and an observe, not a label resolution.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

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
        self._children: dict[tuple[str, ...], object] = {}
        self._http: Any = None  # the /metrics HTTP server, once started

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
