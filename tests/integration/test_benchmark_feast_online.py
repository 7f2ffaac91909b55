"""The Feast online benchmark runs end to end at tiny sizes, so that it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_TIMEOUT_S = 200  # ~30 s on a 2-core machine: feast init, apply, two servers' start-up

PEERS = {"feast_in_process": 1 / 3, "feast_serve": 1 / 5}  # issue #14's targets


def test_feast_online_benchmark_small_run_measures_every_variant(tmp_path: Path) -> None:
    out = tmp_path / "feast_online.json"
    result = run_python(
        ["-m", "benchmarks.feast_online", "--small", "--out", str(out)],
        timeout_s=RUN_TIMEOUT_S,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["small"] is True
    assert data["same_values"] is True
    assert data["feast_serve_same_values"] is True
    assert data["request"] == {
        "feature_service": "driver_activity_v1",
        "driver_id": [1001],
        "val_to_add": [1000],
        "val_to_add_2": [2000],
    }
    values = data["values"]
    conv_rate = values["driver_hourly_stats__conv_rate"][0]
    assert values["transformed_conv_rate__conv_rate_plus_val1"] == [conv_rate + 1000]
    assert values["transformed_conv_rate__conv_rate_plus_val2"] == [conv_rate + 2000]
    results = data["results"]
    assert set(results) == {"carrara", "on_demand_alone", *PEERS}
    calls = data["sizes"]["rounds"] * data["sizes"]["calls_per_round"]
    for r in results.values():
        assert r["count"] == calls
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
    for peer, target in PEERS.items():
        ratio = data["ratios"][f"carrara/{peer}"]
        assert ratio["p50"] == results["carrara"]["p50_ms"] / results[peer]["p50_ms"]
        assert ratio["target_p50"] == target
        assert ratio["met"] is (ratio["p50"] <= target)
    lines = result.stdout.rstrip().splitlines()
    assert lines[-1] == f"-> {out}"
    assert any(line.startswith("p50 carrara/feast_serve: ") for line in lines)
