"""The TLS benchmark runs end to end at tiny sizes, so that it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN_TIMEOUT_S = 200  # ~35 s on an idle 2-core machine (apply and four servers)


def test_tls_benchmark_small_run_measures_every_variant(
    tmp_path: Path, trained_registry: Path
) -> None:
    out = tmp_path / "tls.json"
    result = run_python(
        [
            *("-m", "benchmarks.tls", "--small"),
            *("--models", str(trained_registry), "--out", str(out)),  # copied, not trained
        ],
        timeout_s=RUN_TIMEOUT_S,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["small"] is True
    assert data["same_predictions"] is True
    assert set(data["results"]) == {"plaintext", "tls", "mtls", "tls+token"}
    for r in data["results"].values():
        for phase in ("latency", "connect"):
            assert 0 < r[phase]["p50_ms"] <= r[phase]["p99_ms"] <= r[phase]["max_ms"]
    assert data["p50_ratio_to_plaintext"]["plaintext"] == 1.0
    assert result.stdout.rstrip().splitlines()[-1] == f"-> {out}"
    assert "p50 tls / plaintext" in result.stdout
