"""The batch-scoring benchmark runs end to end at tiny sizes, so that it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_benchmark_small_run_compares_carrara_and_the_naive_pipeline(
    applied_repo: Path, trained_registry: Path, tmp_path: Path
) -> None:
    out = tmp_path / "batch_score.json"
    result = run_python(
        [
            *("-m", "benchmarks.batch_score", "--small"),
            *("--repo", str(applied_repo), "--registry", str(trained_registry)),
            *("--naive-rows", "200", "--out", str(out)),
        ],
        timeout_s=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["small"] is True
    assert data["requests"] == 4_000  # the test world's trips
    assert data["carrara_full"]["peak_rss_mb"] > 10
    (sample,) = data["samples"]
    assert sample["rows"] == 200
    assert sample["carrara_sample_equals_full_run"] is True
    assert sample["agreement"]["rows_differing"] == 0
    assert (
        sample["agreement"]["rows_returned"] + sample["agreement"]["rows_dropped_by_feast"] == 200
    )
    assert set(sample["naive"]["phases_s"]) == {"import", "read", "retrieval", "predict", "write"}
    assert data["commit"]
    assert data["machine"]["cores"] >= 1
    assert data["naive_extrapolated"]["rows"] == 4_000
    assert result.stdout.splitlines()[-1].startswith("ratio at 4,000 rows (naive extrapolated)")
