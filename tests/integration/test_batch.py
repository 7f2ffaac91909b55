"""`carrara score` and its point-in-time join, with Feast's historical retrieval as the oracle.

The entity rows are trips of the test world at their own times and at shifted ones (before
any feature row, past a view's ttl, in the future), plus duplicates: Feast's answer (as
wrapped by serving/historical.py, which keeps every row) must be matched exactly, feature by
feature, and the predictions must be `Booster.predict` on Feast's vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.batch.offline_model import OfflineModel, build_offline_model
from serving.batch.point_in_time import timestamp_ns
from serving.cli import main
from serving.models.card import ModelCard
from serving.models.registry import ModelRegistry
from serving.repo.compile import ensure_plan
from serving.repo.historical import historical_features

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOUR = pd.Timedelta(hours=1)
# Shifts of the trips' times: as is, before the world, past zone_stats' 1 h ttl, past
# driver_stats' 26 h ttl, in the world's future.
SHIFTS = [pd.Timedelta(0), -40 * HOUR, 2 * HOUR, 27 * HOUR, 80 * HOUR, -90 * pd.Timedelta("1s")]


def entity_rows(applied_repo: Path, rows: int, seed: int) -> pd.DataFrame:
    trips = pd.read_parquet(applied_repo / "data" / "trips.parquet")
    picked = trips.sample(rows, random_state=seed).reset_index(drop=True)
    shifts = np.random.default_rng(seed).integers(0, len(SHIFTS), rows)
    picked["event_timestamp"] = picked["event_timestamp"] + pd.Series([SHIFTS[i] for i in shifts])
    picked.loc[5, "driver_id"] = 10**12  # an unknown driver
    duplicates = picked.iloc[[0, 1, 1]]
    return pd.concat([picked, duplicates], ignore_index=True).drop(columns=["duration_s"])


def matrix_of(card: ModelCard, frame: pd.DataFrame) -> np.ndarray:
    return np.column_stack(
        [
            card.category_codes(ref, frame[ref])
            if ref in card.categorical_levels
            else frame[ref].to_numpy(np.float64, na_value=np.nan)
            for ref in card.feature_refs
        ]
    )


def at_ns(frame: pd.DataFrame) -> np.ndarray:
    return timestamp_ns(pa.array(frame["event_timestamp"]))


def assert_same_vectors(got: np.ndarray, expected: np.ndarray, card: ModelCard) -> None:
    same = (got == expected) | (np.isnan(got) & np.isnan(expected))
    bad = [card.feature_refs[j] for j in np.flatnonzero(~same.all(axis=0))]
    assert not bad, f"features differing from Feast: {bad}"


@pytest.fixture(scope="module")
def eta(applied_repo: Path, trained_registry: Path) -> tuple[OfflineModel, ModelCard]:
    plan = ensure_plan(applied_repo)
    loaded = ModelRegistry(trained_registry).load("eta", plan)
    return build_offline_model(loaded, plan, applied_repo), loaded.card


@pytest.fixture(scope="module")
def oracle(
    applied_repo: Path, eta: tuple[OfflineModel, ModelCard]
) -> tuple[pd.DataFrame, np.ndarray]:
    """Entity rows and Feast's feature matrix for them (~10 s: Feast is the slow peer)."""
    _, card = eta
    rows = entity_rows(applied_repo, 700, seed=3)
    inputs = rows[["event_timestamp", *[c.name for c in (*card.entities, *card.request_fields)]]]
    plan = ensure_plan(applied_repo)
    feast = historical_features(applied_repo, plan, card.feature_service, inputs, lambda _: None)
    return rows, matrix_of(card, feast)


def test_offline_vectors_equal_feast_historical_retrieval(
    eta: tuple[OfflineModel, ModelCard], oracle: tuple[pd.DataFrame, np.ndarray]
) -> None:
    model, card = eta
    rows, expected = oracle
    entities = {c.name: rows[c.name].to_numpy() for c in card.entities}
    request = {c.name: rows[c.name].to_numpy() for c in card.request_fields}
    got, missing = model.features(entities, request, at_ns(rows), len(rows))
    assert_same_vectors(got, expected, card)
    views = [j for j, ref in enumerate(card.feature_refs) if ref in model_view_refs(model)]
    np.testing.assert_array_equal(missing, np.isnan(expected[:, views]).sum(axis=1))
    # the shifts must reach the cases they are there for
    assert 0 < np.isnan(expected).any(axis=1).mean() < 0.9
    assert (missing == len(views)).any()  # before the world: every view feature missing


def model_view_refs(model: OfflineModel) -> set[str]:
    return {model.feature_names[j] for j in model.view_columns}


def test_score_writes_input_columns_and_feast_predictions(
    applied_repo: Path,
    trained_registry: Path,
    eta: tuple[OfflineModel, ModelCard],
    oracle: tuple[pd.DataFrame, np.ndarray],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, card = eta
    rows, expected = oracle
    source = tmp_path / "requests.parquet"
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), source, row_group_size=100)
    output = tmp_path / "predictions.parquet"
    code = main(
        [
            "score",
            *("--model", "eta:1", "--input", str(source), "--output", str(output)),
            *("--repo", str(applied_repo), "--registry", str(trained_registry)),
            *("--chunk-rows", "97"),  # chunk boundaries fall inside row groups
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert f"{len(rows):,} rows" in capsys.readouterr().out
    scored = pq.read_table(output)
    assert scored.column_names == [*rows.columns, "prediction", "model_version", "missing_features"]
    assert scored.schema.field("prediction").type == pa.float64()
    out = scored.to_pandas()
    pd.testing.assert_frame_equal(out[rows.columns], rows)
    np.testing.assert_array_equal(out["prediction"], model.scorer.booster.predict(expected))
    assert set(out["model_version"]) == {"1"}
    views = [j for j, ref in enumerate(card.feature_refs) if ref in model_view_refs(model)]
    np.testing.assert_array_equal(out["missing_features"], np.isnan(expected[:, views]).sum(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.parquet", "requests.parquet"]


def test_pricing_scores_equal_feast(
    applied_repo: Path, trained_registry: Path, tmp_path: Path
) -> None:
    """A second service: a plain (unprojected) view and a clock-only on-demand view."""
    plan = ensure_plan(applied_repo)
    loaded = ModelRegistry(trained_registry).load("pricing", plan)
    card = loaded.card
    surge = pd.read_parquet(applied_repo / "data" / "surge_observations.parquet")
    rows = surge.sample(300, random_state=5).reset_index(drop=True)
    rows["event_timestamp"] += pd.Series(np.where(np.arange(300) % 3 == 0, 2 * HOUR, 0 * HOUR))
    inputs = rows[["event_timestamp", "zone_id", "request_ts_s"]]
    expected = matrix_of(
        card,
        historical_features(applied_repo, plan, card.feature_service, inputs, lambda _: None),
    )
    source, output = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.Table.from_pandas(inputs, preserve_index=False), source)
    code = main(
        [
            "score",
            *("--model", "pricing", "--input", str(source), "--output", str(output)),
            *("--repo", str(applied_repo), "--registry", str(trained_registry)),
        ]
    )
    assert code == 0
    got = pq.read_table(output).column("prediction").to_numpy()
    np.testing.assert_array_equal(got, loaded.booster.predict(expected))
