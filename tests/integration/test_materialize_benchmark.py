"""The materialize benchmark runs end to end at tiny sizes, so that it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_benchmark_small_run_compares_feast_and_carrara(tmp_path: Path) -> None:
    out = tmp_path / "materialize.json"
    result = run_python(
        ["-m", "benchmarks.materialize", "--small", "--out", str(out)], timeout_s=240, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["small"] is True
    assert set(data["scenarios"]) == {"window_100k", "drivers_1m"}
    for scenario in data["scenarios"].values():
        assert scenario["comparison"]["identical"] is True
        assert scenario["comparison"]["keys"] == scenario["entity_rows"]
        for tool in ("feast", "carrara"):
            assert scenario[tool]["wall_s"] > 0
            assert scenario[tool]["peak_rss_mb"] > 10
    assert data["commit"]
    assert data["machine"]["cores"] >= 1
    assert any(line.startswith("drivers_1m: identical=True") for line in result.stdout.splitlines())
