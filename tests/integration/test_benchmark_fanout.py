"""The feature-view fan-out benchmark runs end to end at tiny sizes, so that it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_benchmark_small_run_measures_each_view_count_on_both_paths(tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"
    result = run_python(
        ["-m", "benchmarks.fanout", "--small", "--out", str(out)], timeout_s=240, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["small"] is True
    assert set(data["results"]) == {"carrara", "predict", "feast"}
    for by_count in data["results"].values():
        assert set(by_count) == {"1", "5"}
        for lat in by_count.values():
            assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert data["ratio_to_one_view"]["carrara 1"] == 1.0
    assert data["ratio_to_one_view"]["feast 5"] > 0
    assert list(data["targets"]) == ["predict: 5 views p50 <= 1.3x 1 view"]
    assert any(line.startswith(("PASS", "MISS")) for line in result.stdout.splitlines())
