"""The prediction log benchmark runs end to end at tiny sizes, so that it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_TIMEOUT_S = 240  # ~30 s on an idle 2-core machine with the models copied


def test_benchmark_small_run_compares_log_off_and_on_and_logs_every_call(
    tmp_path: Path, trained_registry: Path
) -> None:
    out = tmp_path / "prediction_log.json"
    result = run_python(
        [
            *("-m", "benchmarks.prediction_log", "--small"),
            *("--models", str(trained_registry)),  # copied, not trained again
            *("--out", str(out)),
        ],
        timeout_s=RUN_TIMEOUT_S,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    labels = [r["log"] for r in data["results"]]
    assert labels == ["off", "log 100%", "log 100% (b)", "log + shadow 100%"]
    assert data["shadow_logged_rows"] > 0  # rows the shadow scored, beside the primary's
    for r in data["results"]:
        assert 0 < r["latency"]["p50_ms"] <= r["latency"]["p99_ms"]
        assert r["calls_per_s"] > 0
    assert data["logged_rows"] > 0
    assert data["logged_rows"] == round(data["served_less_dropped"])  # none lost unseen
    assert data["ratios"]["calls_per_s_share"] > 0
    assert "shadow_p50_delta_ms" in data["ratios"]
    assert any(line.startswith(("PASS", "MISS")) for line in result.stdout.splitlines())
