"""The freshness benchmark runs end to end at tiny sizes, so that it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_freshness_small_run_measures_event_to_servable_and_predict_under_ingest(
    tmp_path: Path,
) -> None:
    out = tmp_path / "freshness.json"
    result = run_python(
        ["-m", "benchmarks.freshness", "--small", "--out", str(out)], timeout_s=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert (data["small"], data["rate"], data["zones"]) == (True, 2_000, 64)
    fresh = data["event_to_servable"]
    assert data["probes"] >= 30  # 2 s, a probe every 50 ms, the warm-up left out
    assert data["probes_not_visible_in_10s"] == 0  # every probe's window sum became servable
    assert fresh["count"] == data["probes"]
    assert 0 < fresh["p50_ms"] <= fresh["p90_ms"] <= fresh["p99_ms"] <= fresh["max_ms"]
    assert data["producer_events_per_s"] > 1_000  # paced at 2,000 events/s
    assert data["backlog_at_end"]["pending"] is not None
    assert data["script_calls"] > 0  # the ingester applied events with the window script
    assert set(data["cpu_s_while_ingesting"]) == {"server", "ingester", "redis"}
    for phase in ("alone", "ingesting", "after"):
        predict = data[f"predict_{phase}"]
        assert predict["calls"] > 0
        assert predict["errors"] == 0
        assert 0 < predict["latency"]["p50_ms"] <= predict["latency"]["p99_ms"]
    assert data["predict_calls_per_s_ratio"] > 0
    assert list(data["targets"]) == ["event-to-servable p99 <= 100 ms at 2,000 events/s"]
    assert any(line.startswith(("PASS", "MISS")) for line in result.stdout.splitlines())
    assert result.stdout.rstrip().splitlines()[-1] == f"-> {out}"
