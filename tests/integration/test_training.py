"""Training on the sample world: models beat their naive baselines; cards, registry, CLI.

The models are the session's `trained_registry` (eta and pricing trained with their default
specs on the small test world, `applied_repo`), so the suite trains them once.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from serving.cli import main
from serving.errors import DataError, PlanError
from serving.models.registry import ModelRegistry
from serving.repo.compile import ensure_plan
from serving.repo.model_kinds import Comparison, model_kind
from serving.repo.plan import Column
from serving.training.train import train
from tests.helpers import WORLD_END

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Observed on this world's shape (sample-data seeds 7, 8, 9; world ends at 03:00, 09:10,
# 14:00, 20:35; LightGBM seeds 1 and 7): the holdout MAE is 70-73 % (ETA) and 73-76 %
# (pricing) below every baseline's, RMSE 63-77 % below; seeds move it by under 3 points.
# Asserting 50 % and 40 % leaves a 20-point margin: the gap is structural (labels follow
# traffic, vehicle, demand/supply, which the baselines ignore), not a lucky draw.
MIN_MAE_GAIN_PCT = 50.0
MIN_RMSE_GAIN_PCT = 40.0
# The sample world's surge follows the zone's last minutes of events, which only pricing_v2's
# windows see. On this world's shape (seeds 7, 8, 9; ends 03:00, 09:10, 20:35) pricing_v2's
# holdout error was 41-42 % (MAE) and 33-37 % (RMSE) below the same learner's on batch-only
# pricing_v1; asserting 20 % leaves 13 points.
MIN_WINDOWED_GAIN_PCT = 20.0


@pytest.fixture(scope="module")
def registry(trained_registry: Path) -> ModelRegistry:
    return ModelRegistry(trained_registry)


def iso(hours_before_end: float) -> str:
    return (WORLD_END - timedelta(hours=hours_before_end)).isoformat()


@pytest.mark.parametrize("kind", ["eta", "pricing"])
def test_model_beats_every_naive_baseline_on_the_holdout(
    registry: ModelRegistry, applied_repo: Path, kind: str
) -> None:
    metrics = registry.card(kind).metrics
    assert metrics is not None  # trained here, so scored on a holdout
    assert set(metrics.baselines) == {b.name for b in model_kind(applied_repo, kind).baselines}
    for baseline in metrics.baselines:
        gain = metrics.improvement_pct(baseline)
        assert gain.mae >= MIN_MAE_GAIN_PCT, (baseline, metrics)
        assert gain.rmse >= MIN_RMSE_GAIN_PCT, (baseline, metrics)


def test_pricing_beats_the_same_learner_on_batch_only_features(
    registry: ModelRegistry,
) -> None:
    metrics = registry.card("pricing").metrics
    assert metrics is not None
    assert set(metrics.comparisons) == {"pricing_v1"}
    gain = metrics.comparison_improvement_pct("pricing_v1")
    assert gain.mae >= MIN_WINDOWED_GAIN_PCT, metrics
    assert gain.rmse >= MIN_WINDOWED_GAIN_PCT, metrics


def test_comparison_is_the_same_learner_on_the_same_rows(
    applied_repo: Path, tmp_path: Path
) -> None:
    """Compared with its own service, the comparison must reproduce the model's holdout
    error exactly: same rows, split, parameters and seed."""
    spec = replace(
        model_kind(applied_repo, "pricing"),
        feature_service="pricing_v1",
        compare_with=(Comparison("pricing_v1", "the very same features"),),
    )
    card = train(spec, applied_repo, ModelRegistry(tmp_path / "models")).card
    assert card.metrics is not None
    assert card.metrics.comparisons == {"pricing_v1": card.metrics.model}
    assert card.feature_service == "pricing_v1"


def test_eta_card_names_features_inputs_and_levels(
    registry: ModelRegistry, applied_repo: Path
) -> None:
    plan = ensure_plan(applied_repo)
    card = registry.card("eta")
    service_order = [
        f"{p.name}__{f}" for p in plan.feature_service("eta_v1").projections for f in p.features
    ]
    assert list(card.feature_refs) == service_order
    assert card.feature_types["driver_stats__vehicle_type"] == "String"
    assert card.categorical_levels == {
        "driver_stats__vehicle_type": ("comfort", "economy", "moto", "xl")
    }
    assert card.entities == tuple(
        Column(name, "Int64") for name in ("driver_id", "pickup_zone_id", "dropoff_zone_id")
    )
    assert card.request_fields == (
        *(Column(n, "Float64") for n in ("pickup_lat", "pickup_lon", "dropoff_lat", "dropoff_lon")),
        Column("request_ts_s", "Int64"),
    )
    loaded = registry.load("eta", plan)
    assert loaded.booster.feature_name() == list(card.feature_refs)
    assert loaded.booster.num_trees() == card.best_iteration


def test_card_records_window_rows_and_provenance(
    registry: ModelRegistry, applied_repo: Path
) -> None:
    card = registry.card("pricing")
    labels = pd.read_parquet(applied_repo / model_kind(applied_repo, "pricing").label_table)
    rows, window, metrics = card.rows, card.window, card.metrics
    assert rows is not None
    assert window is not None
    assert metrics is not None
    assert rows.train + rows.validation + rows.holdout == len(labels)
    assert rows.holdout == metrics.rows
    assert rows.holdout >= 0.15 * len(labels)
    assert window.start == labels.event_timestamp.min()
    assert window.end == labels.event_timestamp.max()
    assert window.start < window.holdout_start < window.end <= WORLD_END
    assert re.fullmatch("[0-9a-f]{64}", card.data_fingerprint)
    # Not compared with today's registry: materialize records its intervals there since.
    assert re.fullmatch("[0-9a-f]{64}", card.registry_fingerprint)
    assert card.library_versions["lightgbm"].startswith("4.")
    assert card.params["deterministic"] is True
    assert card.entities == (Column("zone_id", "Int64"),)
    assert card.request_fields == (Column("request_ts_s", "Int64"),)


def test_retraining_is_deterministic_and_lands_in_staging(
    trained_registry: Path, applied_repo: Path, tmp_path: Path
) -> None:
    shutil.copytree(trained_registry, tmp_path / "models")
    registry = ModelRegistry(tmp_path / "models")
    first = registry.card("pricing")
    again = train(model_kind(applied_repo, "pricing"), applied_repo, registry, seed=7)
    assert (again.registration.version, again.registration.alias) == (2, "staging")
    assert again.card.data_fingerprint == first.data_fingerprint
    assert again.card.model_sha256 == first.model_sha256
    assert registry.aliases("pricing") == {"production": 1, "staging": 2}


def test_train_command_prints_the_comparison_and_registers(
    applied_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--repo", str(applied_repo), "--registry", str(tmp_path / "models")]
    window = ["--start", iso(20), "--end", iso(4)]
    assert main(["train", "pricing", *args, *window]) == 0
    out = capsys.readouterr().out
    assert re.search(r"train pricing: [0-9,]+ labels, .* \(train [0-9,]+, validation", out)
    assert re.search(r"holdout \(\d+ rows\) +MAE +RMSE", out)
    assert re.search(r"last_surge +[0-9.]+ +[0-9.]+ +[+-]\d+\.\d%, [+-]\d+\.\d%", out)
    assert re.search(r"pricing_v1 \(same learner\) +[0-9.]+ +[0-9.]+ +[+-]\d+\.\d%", out)
    assert re.search(
        r"\npricing_v2 RMSE [0-9.]+ vs pricing_v1 \(batch-only features\) [0-9.]+: "
        r"\d+\.\d% (lower|higher)\n",
        out,
    )
    assert "registered pricing:1 as pricing@production (first version: production" in out
    trained = ModelRegistry(tmp_path / "models").card("pricing").window
    assert trained is not None
    assert trained.start >= WORLD_END - timedelta(hours=20)
    assert trained.end < WORLD_END - timedelta(hours=4)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ["train", "surge"],
            2,
            re.escape("carrara train: unknown model kind 'surge' (known: eta, pricing)"),
        ),
        (
            ["train", "eta", "--start", iso(-24)],
            1,
            "carrara train: label table .*trips.parquet has no labelled rows in the window",
        ),
        (
            ["train", "eta", "--start", iso(10), "--end", iso(10 - 1 / 12)],
            1,
            "carrara train: .* labelled rows split by time into .* each needs at least 30",
        ),
    ],
)
def test_bad_train_arguments_are_one_clear_line(
    applied_repo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    message: str,
) -> None:
    args = ["--repo", str(applied_repo), "--registry", str(tmp_path / "models")]
    assert main([*argv, *args]) == code
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(message + ".*", err), err
    assert "\n" not in err
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"label": "fare"}, DataError, "trips.parquet has no column 'fare'"),
        ({"feature_service": "eta_v9"}, PlanError, "no feature service 'eta_v9'"),
        ({"label_table": "data/nowhere.parquet"}, DataError, "cannot read label table"),
        (
            {"compare_with": (Comparison("eta_v9", "nothing"),)},
            PlanError,
            "no feature service 'eta_v9'",
        ),
    ],
)
def test_bad_spec_is_refused_naming_what_is_wrong(
    applied_repo: Path, tmp_path: Path, change: dict[str, Any], error: type, message: str
) -> None:
    spec = replace(model_kind(applied_repo, "eta"), **change)
    with pytest.raises(error, match=message):
        train(spec, applied_repo, ModelRegistry(tmp_path / "models"))
