"""The ingest benchmark runs end to end at tiny sizes, so that it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ingest_benchmark_small_run_compares_with_feast_and_windows(tmp_path: Path) -> None:
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
    for zones in (64, 5000):  # the windowed scenario, against the plain ingest of the run
        rate = data[f"windowed_{zones}_zones_events_per_s"]
        assert rate > 0
        ratio = data[f"windowed_{zones}_zones_ratio_to_plain"]
        assert ratio == pytest.approx(rate / data["carrara_events_per_s"])
        windowed = data["windowed"][str(zones)]
        assert windowed["script_calls"] >= 2  # 2,000 events in batches of 1,000
        assert f"events/s windowed ({zones} zones) / plain ingest" in result.stdout
    assert data["plain"]["script_calls"] == 0  # no window script on the plain view
    assert len(data["targets"]) == 2
    assert result.stdout.rstrip().splitlines()[-1] == f"-> {out}"
