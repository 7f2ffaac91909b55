"""The cluster benchmark runs end to end at tiny sizes, so that it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_TIMEOUT_S = 240  # ~45 s on an idle 2-core machine; inside the test's own timeout

TARGETS = {
    "ETA 1 row p50: cluster <= single + 0.15 ms",
    "ETA 100 rows p50: cluster <= 1.5x single",
    "materialize: cluster >= 80% of single's entity rows/s",
    "failover: only UNAVAILABLE, then answers with no manual step",
}


def test_benchmark_small_run_compares_topologies_and_stops_its_processes(
    tmp_path: Path, trained_registry: Path
) -> None:
    out = tmp_path / "cluster.json"
    result = run_python(
        [
            *("-m", "benchmarks.cluster", "--small"),
            *("--models", str(trained_registry)),  # copied, not trained again
            *("--out", str(out)),
        ],
        timeout_s=RUN_TIMEOUT_S,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["small"] is True
    assert set(data["targets"]) == TARGETS
    # both servers answer every request with the same predictions and features
    checked = data["predictions"]
    assert checked["identical"] is True
    assert checked["requests"] > 0
    assert checked["missing_features"]["single"] == checked["missing_features"]["cluster"]
    for case in data["predict"]:
        for topology in ("single", "cluster"):
            lat = case[topology]
            assert lat["count"] > 0
            assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert {(c["model"], c["rows"]) for c in data["predict"]} >= {("eta", 1), ("eta", 100)}
    materialized = data["materialize"]
    assert materialized["same_key_count"] is True
    assert all(
        r["entity_rows"] == materialized["scenario"]["entity_rows"] for r in materialized["runs"]
    )
    failover = data["failover"]
    assert failover["failure_codes"] == ["UNAVAILABLE"]
    assert failover["answering_again_s"] is not None
    assert failover["replica_promoted_s"] is not None
    assert data["started_pids"]
    assert data["left_running"] == []
    assert any(line.startswith(("PASS", "MISS")) for line in result.stdout.splitlines())
