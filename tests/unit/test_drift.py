"""Drift's arithmetic (training bins, served shares, PSI), the served window, the card's
training distributions, and live accuracy's metrics."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from serving.models.card import FeatureDistribution, ModelCard, read_card
from serving.monitoring.drift import (
    DriftWindows,
    categorical_distribution,
    level,
    numeric_distribution,
    psi,
    served_shares,
    training_distributions,
)
from serving.monitoring.evaluate import auc, log_loss
from serving.monitoring.prediction_log import PredictionRecord
from serving.repo.plan import Column

REFS = ("trips__distance_km", "trips__vehicle")


def make_card(distributions: dict[str, FeatureDistribution] | None) -> ModelCard:
    when = datetime(2026, 11, 1, tzinfo=UTC)
    return ModelCard(
        name="eta",
        version=1,
        feature_service="eta_v1",
        label="duration_s",
        feature_refs=REFS,
        feature_types={REFS[0]: "Float64", REFS[1]: "String"},
        categorical_levels={REFS[1]: ("bike", "car")},
        entities=(Column("driver_id", "Int64"),),
        request_fields=(),
        window=None,
        rows=None,
        metrics=None,
        data_fingerprint="",
        model_sha256="",
        registry_fingerprint="",
        params={},
        best_iteration=1,
        library_versions={},
        git_revision=None,
        created_at=when,
        training_distributions=distributions,
    )


def training_matrix(rows: int = 5_000, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    distance = rng.gamma(2.0, 3.0, rows)
    distance[::50] = np.nan  # 2 % missing
    vehicle = rng.choice([0.0, 1.0], rows, p=[0.3, 0.7])
    return np.column_stack([distance, vehicle])


def test_numeric_bins_are_deciles_of_the_present_values() -> None:
    distribution = numeric_distribution(training_matrix()[:, 0])
    assert distribution.kind == "numeric"
    assert len(distribution.edges) == 9
    assert len(distribution.proportions) == 10
    np.testing.assert_allclose(distribution.proportions, 0.1, atol=0.002)
    assert distribution.missing == pytest.approx(0.02)


def test_a_feature_of_few_values_gets_one_bin_per_distinct_edge() -> None:
    distribution = numeric_distribution(np.array([0.0] * 90 + [1.0] * 10))
    assert distribution.edges == (0.0, 1.0)
    assert sum(distribution.proportions) == pytest.approx(1.0)
    assert distribution.proportions[1] == pytest.approx(0.9)  # 0 <= x < 1


def test_categorical_shares_are_per_level_and_unknown_levels_count_as_missing() -> None:
    codes = np.array([0.0, 1.0, 1.0, 1.0, np.nan])
    distribution = categorical_distribution(codes, 2)
    assert distribution.proportions == (0.25, 0.75)
    assert distribution.missing == pytest.approx(0.2)


def test_psi_is_zero_for_the_same_distribution_and_alerts_on_a_shift() -> None:
    train = training_matrix()
    distribution = numeric_distribution(train[:, 0])
    same = served_shares(distribution, training_matrix(seed=2)[:, 0])
    shifted = served_shares(distribution, training_matrix(seed=2)[:, 0] * 1.6)
    assert psi(distribution.proportions, same.proportions) < 0.02
    assert level(psi(distribution.proportions, same.proportions)) == "ok"
    assert psi(distribution.proportions, shifted.proportions) >= 0.2
    assert level(psi(distribution.proportions, shifted.proportions)) == "alert"
    assert level(0.15) == "warn"


def test_missing_values_are_a_rate_of_their_own_not_a_shift() -> None:
    distribution = numeric_distribution(training_matrix()[:, 0])
    served = training_matrix(seed=3)[:, 0]
    served[::2] = np.nan
    shares = served_shares(distribution, served)
    assert shares.missing_rate == pytest.approx(0.5, abs=0.01)
    assert psi(distribution.proportions, shares.proportions) < 0.03


def test_a_card_round_trips_its_training_distributions_and_old_cards_have_none(
    tmp_path: Path,
) -> None:
    distributions = training_distributions(training_matrix(), REFS, {REFS[1]: ("bike", "car")})
    assert distributions[REFS[1]].kind == "categorical"
    card = make_card(distributions)
    (tmp_path / "model.json").write_text(card.to_json())
    assert read_card(tmp_path / "model.json") == card
    old = {k: v for k, v in asdict(make_card(None)).items() if k != "training_distributions"}
    (tmp_path / "old.json").write_text(json.dumps(old, default=str))
    assert read_card(tmp_path / "old.json").training_distributions is None


def test_served_windows_keep_the_latest_rows_and_report_psi_per_feature() -> None:
    train = training_matrix()
    card = make_card(training_distributions(train, REFS, {REFS[1]: ("bike", "car")}))
    windows = DriftWindows(1_000, lambda _name, _version: card)
    shifted = training_matrix(seed=4)
    shifted[:, 0] *= 2.0
    for start in range(0, 3_000, 250):  # wraps the ring three times: only shifted rows stay
        rows = train[start : start + 250] if start < 1_500 else shifted[start : start + 250]
        windows.consume([record(rows)])
    psi_of = {item.feature: item.psi for item in windows.psi()}
    assert psi_of[REFS[0]] >= 0.2
    assert psi_of[REFS[1]] < 0.05


def test_a_version_without_training_distributions_is_not_measured() -> None:
    windows = DriftWindows(100, lambda _name, _version: make_card(None))
    windows.consume([record(training_matrix()[:200])])
    assert list(windows.psi()) == []


def test_auc_and_log_loss_on_known_cases() -> None:
    truth = np.array([0.0, 0.0, 1.0, 1.0])
    assert auc(truth, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auc(truth, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert auc(truth, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert np.isnan(auc(np.ones(3), np.array([0.1, 0.2, 0.3])))
    assert log_loss(truth, np.array([0.5] * 4)) == pytest.approx(np.log(2))


def record(features: np.ndarray) -> PredictionRecord:
    rows = len(features)
    return PredictionRecord(
        request_id="r",
        time_s=0.0,
        model="eta",
        version="1",
        alias="production",
        role="primary",
        entities={},
        request_data={},
        feature_names=REFS,
        features=features,
        predictions=np.zeros(rows),
        missing=np.zeros(rows, dtype=np.int32),
        degraded=False,
        latency_ms=0.0,
    )


def test_the_logs_status_tells_stale_from_missing_and_computed_from_absent() -> None:
    from serving.monitoring.parquet_log import _status_codes
    from serving.monitoring.prediction_log import PredictionRecord

    features = np.array([[1.0, np.nan, np.nan, 4.0]])
    read = np.array([[1, 0, 2, 0]], np.uint8)  # present, missing, stale, not read (computed)
    record = PredictionRecord(
        "r", 0.0, "m", "1", "production", "primary", {}, {}, ("a", "b", "c", "d"),
        features, np.zeros(1), np.zeros(1), False, 1.0, read,
    )  # fmt: skip
    assert _status_codes(record).tolist() == [[1, 0, 2, 1]]
