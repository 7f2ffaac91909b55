"""The ingest benchmark runs end to end at tiny sizes, so that it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ingest_benchmark_small_run_compares_with_feast(tmp_path: Path) -> None:
    out = tmp_path / "ingest.json"
    result = run_python(
        ["-m", "benchmarks.ingest", "--small", "--out", str(out)], timeout_s=240, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert (data["small"], data["events"]) == (True, 2_000)
    assert data["carrara_events_per_s"] > 0
    assert data["feast_push_rows_per_s"] > 0
    assert "events/s carrara ingest / feast push" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1] == f"-> {out}"
