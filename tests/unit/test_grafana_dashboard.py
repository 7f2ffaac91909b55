"""The Grafana dashboard queries only metrics the server exports, under their exported names."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest

from serving.monitoring.drift import FeaturePsi
from serving.online.metrics import ServerMetrics
from serving.store.feature_cache import CacheStats

DASHBOARD = (
    Path(__file__).resolve().parents[2] / "serving" / "monitoring" / "grafana_dashboard.json"
)


def exported_names() -> set[str]:
    metrics = ServerMetrics()
    metrics.watch_drift(lambda: [FeaturePsi("eta", "1", "f", 0.05, 0.0)])
    metrics.watch_feature_cache(lambda: CacheStats(10, 1, 2, 3, 0, 0, True))
    metrics.observe("Predict", "eta", "OK", 0.001)
    metrics.count_missing("v", 1, 1)
    metrics.count_degraded("eta")
    metrics.count_log_dropped("queue_full", 1)
    metrics.observe_read(0.001)
    metrics.observe_freshness("v", [0.1])
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def test_every_query_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for q in queries for name in re.findall(r"carrara_[a-z_]+", q)}
    assert len(used) >= 10
    assert used <= exported_names(), used - exported_names()


def test_panels_cover_what_operators_watch() -> None:
    titles = " ".join(p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]).lower()
    for subject in ("requests", "latency", "missing", "stale", "psi", "dropped", "cache"):
        assert subject in titles
