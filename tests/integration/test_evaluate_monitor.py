"""`carrara evaluate` and `carrara monitor` on prediction logs written by the log's own
writer, against the test world's trained eta model (its card and training distributions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.cli import main
from serving.models.card import FeatureDistribution, ModelCard
from serving.models.registry import ModelRegistry
from serving.monitoring.parquet_log import LogSettings, ParquetLog
from serving.monitoring.prediction_log import PredictionRecord

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

HOUR = datetime(2026, 12, 2, 3, tzinfo=UTC)  # the log's first hour
SHIFTED = "pickup_zone__traffic_index"


@pytest.fixture(scope="module")
def eta_card(trained_registry: Path) -> ModelCard:
    card = ModelRegistry(trained_registry).card("eta:1")
    assert card.training_distributions is not None  # recorded at training
    return card


def write_log(root: Path, records: list[PredictionRecord]) -> None:
    writer = ParquetLog(LogSettings(root))
    writer.consume(records)
    writer.close()


def eta_record(
    card: ModelCard, request_id: str, at: datetime, features: np.ndarray, driver_id: int = 7
) -> PredictionRecord:
    rows = len(features)
    return PredictionRecord(
        request_id=request_id,
        time_s=at.timestamp(),
        model="eta",
        version=str(card.version),
        alias="production",
        role="primary",
        entities={
            "driver_id": [driver_id] * rows,
            "pickup_zone_id": [1] * rows,
            "dropoff_zone_id": [2] * rows,
        },
        request_data={"request_ts_s": [int(at.timestamp())] * rows},
        feature_names=card.feature_refs,
        features=features,
        predictions=np.arange(rows, dtype=np.float64) + 100.0,
        missing=np.zeros(rows, dtype=np.int32),
        degraded=False,
        latency_ms=1.0,
    )


def test_evaluate_joins_by_request_id_and_reports_per_version_and_hour(
    tmp_path: Path, trained_registry: Path, eta_card: ModelCard, capsys: pytest.CaptureFixture[str]
) -> None:
    width = len(eta_card.feature_refs)
    write_log(
        tmp_path / "log",
        [
            eta_record(eta_card, "a", HOUR + timedelta(minutes=5), np.zeros((2, width))),
            eta_record(eta_card, "b", HOUR + timedelta(minutes=65), np.zeros((1, width))),
        ],
    )
    # predictions are 100, 101 (request a) and 100 (request b); errors 10, -20 and 30
    outcomes = pd.DataFrame(
        {
            "request_id": ["a", "a", "b", "gone"],
            "row": [0, 1, 0, 0],
            eta_card.label: [90.0, 121.0, 70.0, 1.0],
        }
    )
    outcomes.to_parquet(tmp_path / "outcomes.parquet")
    code = main(
        [
            "evaluate",
            "--model",
            "eta",
            "--log",
            str(tmp_path / "log"),
            "--outcomes",
            str(tmp_path / "outcomes.parquet"),
            "--registry",
            str(trained_registry),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "3 of 4 outcomes joined to logged predictions by request_id" in out
    version_line = next(line for line in out.splitlines() if line.startswith("  1 "))
    mae, rmse = 20.0, float(np.sqrt((100 + 400 + 900) / 3))
    assert f"{mae:.4g}" in version_line
    assert f"{rmse:.4g}" in version_line
    assert eta_card.metrics is not None
    assert f"{eta_card.metrics.model.mae:.4g}" in version_line  # the card's holdout beside
    assert "2026-12-02 03:00" in out
    assert "2026-12-02 04:00" in out


def test_evaluate_joins_by_entity_and_nearest_time_within_the_window(
    tmp_path: Path, trained_registry: Path, eta_card: ModelCard, capsys: pytest.CaptureFixture[str]
) -> None:
    width = len(eta_card.feature_refs)
    write_log(
        tmp_path / "log",
        [eta_record(eta_card, "a", HOUR, np.zeros((1, width)), driver_id=d) for d in (1, 2)],
    )
    outcomes = pd.DataFrame(
        {
            "driver_id": [1, 2, 3],
            "pickup_zone_id": [1, 1, 1],
            "dropoff_zone_id": [2, 2, 2],
            "event_timestamp": [HOUR + timedelta(minutes=3), HOUR + timedelta(hours=2), HOUR],
            eta_card.label: [110.0, 0.0, 0.0],
        }
    )
    outcomes.to_parquet(tmp_path / "outcomes.parquet")
    code = main(
        [
            "evaluate",
            "--model",
            "eta",
            "--log",
            str(tmp_path / "log"),
            "--outcomes",
            str(tmp_path / "outcomes.parquet"),
            "--registry",
            str(trained_registry),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    # driver 2's outcome is two hours off (window 15 min), driver 3 was never predicted
    assert "1 of 3 outcomes joined to logged predictions by entity keys and time" in out


def test_evaluate_names_the_file_and_the_column_an_outcomes_file_lacks(
    tmp_path: Path, trained_registry: Path, eta_card: ModelCard, capsys: pytest.CaptureFixture[str]
) -> None:
    features = np.zeros((1, len(eta_card.feature_refs)))
    write_log(tmp_path / "log", [eta_record(eta_card, "a", HOUR, features)])
    outcomes = tmp_path / "outcomes.parquet"
    pd.DataFrame({"request_id": ["a"], "minutes": [1.0]}).to_parquet(outcomes)
    code = main(
        [
            "evaluate",
            "--model",
            "eta",
            "--log",
            str(tmp_path / "log"),
            "--outcomes",
            str(outcomes),
            "--registry",
            str(trained_registry),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"outcomes file {outcomes} has no column {eta_card.label!r}" in err
    assert "Traceback" not in err


def sample(distribution: FeatureDistribution, rows: int, rng: np.random.Generator) -> np.ndarray:
    """Values drawn from a training distribution: a bin by its share, a value inside it."""
    shares = np.asarray(distribution.proportions)
    bins = rng.choice(len(shares), rows, p=shares / shares.sum())
    if distribution.kind == "categorical":
        values = bins.astype(np.float64)
    else:
        edges = np.asarray(distribution.edges)
        low = np.concatenate([[edges[0] - 1.0], edges])[bins]
        high = np.concatenate([edges, [edges[-1] + 1.0]])[bins]
        values = low + (high - low) * rng.uniform(0.0, 0.999, rows)
    values[rng.uniform(size=rows) < distribution.missing] = np.nan
    return values


def test_monitor_flags_exactly_the_shifted_feature_in_its_report(
    tmp_path: Path, trained_registry: Path, eta_card: ModelCard, capsys: pytest.CaptureFixture[str]
) -> None:
    assert eta_card.training_distributions is not None
    rng = np.random.default_rng(5)
    rows = 4_000
    columns = []
    for ref in eta_card.feature_refs:
        values = sample(eta_card.training_distributions[ref], rows, rng)
        if ref == SHIFTED:  # a traffic change: every zone's index up by half its range
            edges = eta_card.training_distributions[ref].edges
            values = values + (edges[-1] - edges[0]) * 0.5
        columns.append(values)
    features = np.column_stack(columns)
    write_log(tmp_path / "log", [eta_record(eta_card, "r", HOUR, features)])
    page = tmp_path / "report.html"
    code = main(
        [
            "monitor",
            "--model",
            "eta",
            "--log",
            str(tmp_path / "log"),
            "--registry",
            str(trained_registry),
            "--out",
            str(page),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    flagged = {
        line.split()[0] for line in out.splitlines() if " alert " in line or " warn " in line
    }
    assert flagged == {SHIFTED}, out
    assert f"1 of {len(eta_card.feature_refs)} features drifted" in out
    text = page.read_text()
    assert text.count("<svg") == len(eta_card.feature_refs)  # a picture per feature
    assert "src=" not in text
    assert "<script" not in text


def test_monitor_against_a_logged_baseline_ignores_what_moves_with_the_clock(
    tmp_path: Path, trained_registry: Path, eta_card: ModelCard, capsys: pytest.CaptureFixture[str]
) -> None:
    assert eta_card.training_distributions is not None
    rng = np.random.default_rng(6)
    clock = "request_time__hour_of_day"  # served at one hour, trained over a day and more
    windows = []
    for shifted in (False, True):
        columns = []
        for ref in eta_card.feature_refs:
            values = sample(eta_card.training_distributions[ref], 3_000, rng)
            if ref == clock:
                values[:] = 3.0
            if shifted and ref == SHIFTED:
                edges = eta_card.training_distributions[ref].edges
                values = values + (edges[-1] - edges[0]) * 0.5
            columns.append(values)
        windows.append(np.column_stack(columns))
    records = [
        eta_record(eta_card, "before", HOUR, windows[0]),
        eta_record(eta_card, "after", HOUR + timedelta(hours=1), windows[1]),
    ]
    write_log(tmp_path / "log", records)
    base = ["monitor", "--model", "eta", "--log", str(tmp_path / "log")]
    base += ["--registry", str(trained_registry), "--out", str(tmp_path / "report.html")]

    def flagged(*flags: str) -> set[str]:
        assert main([*base, *flags]) == 0
        out = capsys.readouterr().out
        return {line.split()[0] for line in out.splitlines() if " alert " in line}

    assert {SHIFTED, clock} <= flagged()  # against training: the clock feature too
    until = (HOUR + timedelta(minutes=30)).isoformat()
    assert flagged("--baseline-until", until) == {SHIFTED}
    assert "against baseline" in (tmp_path / "report.html").read_text()
