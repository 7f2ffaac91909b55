"""A fast slice of the scorer suite (benchmarks/scorer_suite.py): each path (lignum, lignum
with +inf as the largest double, LightGBM for what lignum refuses or gets wrong, refusal of a
multi-output model) with no difference from Booster.predict on every split's edge rows; and the
benchmark itself, run small, so that it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.scorer_suite import Kind, check, small_kinds, train

ROOT = Path(__file__).resolve().parents[2]
SCORED_BY = {  # kind -> the scorer it must get; every other kind of the slice: lignum
    "poisson/rf": "lightgbm",  # lignum refuses random forests
    "regression/linear_tree": "lightgbm",  # ... and linear trees
    "regression_sqrt/gbdt": "lightgbm",  # lignum does not square the output
    "multiclass": "refused",
}


@pytest.mark.parametrize("kind", small_kinds(), ids=lambda kind: kind.name)
def test_a_kind_scores_as_booster_predict_on_every_split_or_is_refused(kind: Kind) -> None:
    result, _ = check(kind, train(kind, rows=600, rounds=8))
    assert result.problems == []
    assert result.silent == 0
    assert result.scorer.split("+")[0] == SCORED_BY.get(kind.name, "lignum"), result.reason


def test_the_slice_has_infinities_mapped_and_exact() -> None:
    kind = next(k for k in small_kinds() if k.name == "regression/gbdt")
    result, _ = check(kind, train(kind, rows=600, rounds=8))
    assert result.scorer == "lignum+inf"  # data with NaN: LightGBM wrote threshold=inf splits
    assert result.silent == 0


@pytest.mark.slow
def test_the_benchmark_runs_small_and_prints_its_ratio(tmp_path: Path) -> None:
    out = tmp_path / "scorer_suite.json"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.scorer_suite", "--small", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "silent differences on accepted models: 0" in run.stdout
    assert "ratio fallback/LightGBM fast path" in run.stdout.splitlines()[-1]
    data = json.loads(out.read_text())
    assert len(data["results"]) == len(small_kinds())
    assert set(data["fallback_1_row"]) == {"warm", "cold"}
