"""The online benchmark runs end to end at tiny sizes, so that it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_TIMEOUT_S = 240  # ~60 s on an idle 2-core machine; inside the test's own timeout

TARGETS = {"echo", "carrara", "naive", "feast"}


def test_benchmark_small_run_measures_every_target_and_stops_its_processes(
    tmp_path: Path, trained_registry: Path
) -> None:
    out = tmp_path / "online.json"
    result = run_python(
        [
            *("-m", "benchmarks.online", "--small"),
            *("--models", str(trained_registry)),  # copied, not trained again
            *("--processes", "1,2", "--out", str(out)),
            *("--feature-cache", "10000"),  # the cache study (benchmarks/online_cache.py)
        ],
        timeout_s=RUN_TIMEOUT_S,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["small"] is True
    results = data["results"]
    assert {r["target"] for r in results} == TARGETS
    for processes in (1, 2):
        cases = {(r["model"], r["rows"]) for r in results if r.get("processes") == processes}
        assert cases >= {(m, n) for m in ("pricing", "eta") for n in (1, 10)}
    for r in results:
        assert r["latency"]["count"] > 0
        assert 0 < r["latency"]["p50_ms"] <= r["latency"]["p99_ms"] <= r["latency"]["max_ms"]
        assert r["calls_per_s"] > 0
    # Carrara and the naive Feast pipeline score the same rows to the same predictions
    assert data["prediction_check_max_abs_diff"]
    assert all(diff <= 1e-9 for diff in data["prediction_check_max_abs_diff"].values())
    assert all(models["trees"] > 0 for models in data["models"].values())
    for startup in ("carrara_p1", "carrara_p2", "feast_listen"):
        assert data["startup"][startup]["ready_s"] > 0
    assert len(data["targets"]) == 2 * 4  # 100 rows are left out with --small
    assert data["started_pids"]
    assert data["left_running"] == []
    assert data["commit"]
    assert any(line.startswith(("PASS", "MISS")) for line in result.stdout.splitlines())
    cache = data["feature_cache"]
    assert [r.get("cache") for r in cache["results"]] == [None, "off", "on"]
    assert cache["identical_predictions"] is True
    assert 0 < cache["hit_rate"] < 1  # Zipf traffic: popular drivers hit, the tail misses
    assert cache["invalidation"]["write_to_reply"]["count"] > 0
    assert len(cache["targets"]) == 5
