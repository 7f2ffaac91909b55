"""The push benchmark runs end to end at tiny sizes, so that it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_push_benchmark_small_run_compares_with_feast(tmp_path: Path) -> None:
    out = tmp_path / "push.json"
    result = run_python(
        ["-m", "benchmarks.push", "--small", "--out", str(out)], timeout_s=240, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["small"] is True
    assert set(data["results"]) == {"carrara", "feast_push"}
    for r in data["results"].values():
        assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["rows_per_s"] > 0
    assert data["rows_per_s_ratio"] > 0
    assert "rows/s carrara/feast_push" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1] == f"-> {out}"
