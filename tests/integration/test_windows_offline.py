"""Windowed views offline: training sets (Feast's retrieval plus Carrara's windows) and batch
scoring give each row its windows as of its own time, as serving/repo/windows.py defines them.

A tiny repo: a PushSource over a FileSource of raw events, a StreamFeatureView with
aggregations over it, a plain feature view, and an on-demand view dividing two windowed sums.
The oracle is a brute force over the events, row by row, straight from the definition.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.batch.offline_model import build_offline_model
from serving.models.registry import ModelRegistry
from serving.repo.compile import apply_repo, ensure_plan
from serving.repo.historical import historical_features
from serving.repo.model_kinds import model_kind
from serving.repo.plan import ServingPlan
from serving.repo.windows import tile_of
from serving.store.redis_process import RedisProcess
from serving.training.train import train

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
HOP_S = 10
DEFINITIONS = """
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource
from feast.aggregation import Aggregation
from feast.on_demand_feature_view import on_demand_feature_view
from feast.stream_feature_view import StreamFeatureView
from feast.types import Float64, Int64
from feast.value_type import ValueType

zone = Entity(name="zone", join_keys=["zone_id"], value_type=ValueType.INT64)
events = FileSource(
    name="zone_events_batch",
    path="data/zone_events.parquet",
    timestamp_field="event_timestamp",
    field_mapping={"requests": "trip_requested"},
)
push = PushSource(name="zone_events", batch_source=events)
aggs = [
    Aggregation(column="trip_requested", function="sum", time_window=timedelta(seconds=60)),
    Aggregation(column="trip_requested", function="sum", time_window=timedelta(seconds=300)),
    Aggregation(column="driver_available", function="sum", time_window=timedelta(seconds=300)),
    Aggregation(column="driver_available", function="count", time_window=timedelta(seconds=300)),
    Aggregation(column="fare", function="mean", time_window=timedelta(seconds=300)),
    Aggregation(column="fare", function="min", time_window=timedelta(seconds=60)),
    Aggregation(column="fare", function="max", time_window=timedelta(seconds=900)),
]
TYPES = {"sum": Int64, "count": Int64, "mean": Float64, "min": Float64, "max": Float64}
zone_activity = StreamFeatureView(
    name="zone_activity",
    entities=[zone],
    ttl=timedelta(minutes=30),
    source=push,
    schema=[Field(name="zone_id", dtype=Int64)]
    + [
        Field(name=a.resolved_name(a.time_window), dtype=TYPES[a.function])
        for a in aggs
    ],
    aggregations=aggs,
    timestamp_field="event_timestamp",
    enable_tiling=True,
    tiling_hop_size=timedelta(seconds=10),
)
zone_info = FeatureView(
    name="zone_info",
    entities=[zone],
    ttl=timedelta(days=1),
    schema=[Field(name="area_km2", dtype=Float64)],
    source=FileSource(path="data/zone_info.parquet", timestamp_field="event_timestamp"),
)


@on_demand_feature_view(
    sources=[zone_activity, zone_info],
    schema=[Field(name="demand_ratio", dtype=Float64),
            Field(name="requests_per_km2", dtype=Float64)],
    mode="python",
)
def demand(inputs):
    requests = inputs["sum_trip_requested_300s"]
    return {
        "demand_ratio": [
            None if r is None or d is None else r / (d + 1)
            for r, d in zip(requests, inputs["sum_driver_available_300s"])
        ],
        # a windowed and a plain view's feature together
        "requests_per_km2": [
            None if r is None or a is None else r / a
            for r, a in zip(requests, inputs["area_km2"])
        ],
    }


windows_v1 = FeatureService(name="windows_v1", features=[zone_activity, zone_info])
with_ratio = FeatureService(
    name="with_ratio",
    features=[zone_activity[["sum_trip_requested_60s"]], demand, zone_info],
)
"""
MODEL_KINDS = """
from serving.repo.model_kinds import ModelKind

MODEL_KINDS = {
    "demand": ModelKind("demand", "windows_v1", "data/labels.parquet", "label"),
    "ratio": ModelKind("ratio", "with_ratio", "data/labels.parquet", "label"),
}
"""


def make_events(rng: np.random.Generator) -> pd.DataFrame:
    n = 600
    times = T0 + pd.to_timedelta(rng.integers(0, 1_200_000_000, n), unit="us")
    frame = pd.DataFrame(
        {
            "zone_id": pd.array(rng.integers(1, 4, n), "Int64"),  # zone 4 has no events
            "event_timestamp": pd.Series(times, dtype="datetime64[us, UTC]"),
            "requests": pd.array(rng.integers(0, 5, n), "Int64"),
            "driver_available": pd.array(rng.integers(0, 3, n), "Int64"),
            "fare": rng.normal(12.0, 4.0, n),
        }
    )
    frame.loc[rng.choice(n, 30, replace=False), "requests"] = pd.NA
    frame.loc[rng.choice(n, 30, replace=False), "fare"] = np.nan
    frame.loc[rng.choice(n, 10, replace=False), "zone_id"] = pd.NA  # never counted
    frame.loc[rng.choice(n, 10, replace=False), "event_timestamp"] = pd.NaT
    # events exactly on tile boundaries, twice
    edge = T0 + timedelta(seconds=300)
    frame.loc[0, ["zone_id", "event_timestamp"]] = [1, edge]
    frame.loc[1, ["zone_id", "event_timestamp"]] = [1, edge]
    return frame


def make_labels(rng: np.random.Generator) -> pd.DataFrame:
    n = 400
    offsets = rng.integers(-120_000_000, 1_500_000_000, n)
    offsets[:5] = [300_000_000, 299_999_999, 300_000_001, 310_000_000, 0]  # tile edges
    frame = pd.DataFrame(
        {
            "event_timestamp": T0 + pd.to_timedelta(offsets, unit="us"),
            "zone_id": rng.integers(1, 5, n),
            "label": rng.normal(0, 1, n),
        }
    )
    return pd.concat([frame, frame.iloc[[3, 3]]], ignore_index=True)  # duplicate rows


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisProcess) -> Path:
    root = tmp_path_factory.mktemp("windows") / "repo"
    (root / "data").mkdir(parents=True)
    (root / "windows_definitions.py").write_text(DEFINITIONS)
    (root / "model_kinds.py").write_text(MODEL_KINDS)
    (root / ".feastignore").write_text("model_kinds.py\n")
    (root / "feature_store.yaml").write_text(
        "project: windows_offline\nregistry: data/registry.db\nprovider: local\n"
        f'online_store:\n    type: redis\n    connection_string: "127.0.0.1:{redis_server.port}"\n'
        "entity_key_serialization_version: 3\n"
    )
    rng = np.random.default_rng(11)
    pq.write_table(
        pa.Table.from_pandas(make_events(rng), preserve_index=False),
        root / "data" / "zone_events.parquet",
    )
    info = pa.table(
        {
            "zone_id": pa.array([1, 2, 3, 4], pa.int64()),
            "event_timestamp": pa.array([T0 - timedelta(hours=1)] * 4, pa.timestamp("us", "UTC")),
            "area_km2": pa.array([1.5, 2.0, 0.5, 3.0]),
        }
    )
    pq.write_table(info, root / "data" / "zone_info.parquet")
    pq.write_table(
        pa.Table.from_pandas(make_labels(rng), preserve_index=False),
        root / "data" / "labels.parquet",
    )
    apply_repo(root)
    return root


def micros(times: pd.Series) -> pd.Series:
    return times.dt.as_unit("us").astype("int64")


def held_online(view: Any, times_us: np.ndarray, at: int) -> bool:
    """The store holds the view's values as of `at`: an event of the zone at or before it,
    and (ttl > 0) its windows emptied at most ttl before (serving/repo/windows.py)."""
    times_us = times_us[times_us <= at]
    if not len(times_us):
        return False
    longest = max(a.window_s for a in view.aggregations)
    emptied = (tile_of(int(times_us.max()), HOP_S) + longest // HOP_S) * HOP_S * 1_000_000
    return not view.ttl_s or at - view.ttl_s * 1_000_000 <= emptied


def brute_force(repo: Path, plan: ServingPlan, rows: pd.DataFrame) -> dict[str, list[Any]]:
    """`zone_activity__<feature>` per row, from the definition."""
    events = pd.read_parquet(repo / "data" / "zone_events.parquet")
    events = events.dropna(subset=["zone_id", "event_timestamp"])
    event_us = micros(events["event_timestamp"]).to_numpy()
    view = plan.feature_views["zone_activity"]
    source = {"trip_requested": "requests"}
    out: dict[str, list[Any]] = {}
    at_us = micros(rows["event_timestamp"])
    for agg in view.aggregations:
        column = events[source.get(agg.column, agg.column)].astype("Float64")
        values: list[Any] = []
        for zone, at in zip(rows["zone_id"], at_us, strict=True):
            if not held_online(view, event_us[events["zone_id"].to_numpy() == zone], at):
                values.append(None)
                continue
            first = tile_of(at, HOP_S) - agg.window_s // HOP_S + 1
            tiles = event_us // (HOP_S * 1_000_000)
            held = (events["zone_id"].to_numpy() == zone) & (tiles >= first) & (event_us <= at)
            x = [v for v in column[held].dropna().tolist() if not math.isnan(v)]
            values.append(
                {
                    "sum": sum(x),
                    "count": len(x),
                    "mean": math.fsum(x) / len(x) if x else None,
                    "min": min(x) if x else None,
                    "max": max(x) if x else None,
                }[agg.function]
            )
        out[f"zone_activity__{agg.name}"] = values
    return out


def assert_column(got: Any, expected: list[Any], name: str) -> None:
    got = pd.Series(got).astype("Float64").to_numpy(np.float64, na_value=np.nan)
    want = np.array([np.nan if v is None else v for v in expected], dtype=np.float64)
    same = np.isclose(got, want, rtol=1e-12, atol=0) | (np.isnan(got) & np.isnan(want))
    assert same.all(), f"{name}: rows {np.flatnonzero(~same)[:10]} differ"


def test_training_set_windows_are_the_definition_as_of_each_label(repo: Path) -> None:
    plan = ensure_plan(repo)
    labels = pd.read_parquet(repo / "data" / "labels.parquet")
    inputs = labels[["event_timestamp", "zone_id"]]
    found = historical_features(repo, plan, "windows_v1", inputs, lambda _rows: None)
    assert len(found) == len(labels)
    expected = brute_force(repo, plan, labels)
    for name, values in expected.items():
        assert_column(found[name], values, name)
    assert (found["zone_activity__sum_trip_requested_300s"] > 0).mean() > 0.3  # data reached
    no_events = found.loc[labels["zone_id"] == 4, "zone_activity__count_driver_available_300s"]
    assert no_events.isna().all()  # a zone never pushed: missing, as the online store has none
    assert (
        found["zone_info__area_km2"].tolist()
        == labels["zone_id"].map({1: 1.5, 2: 2.0, 3: 0.5, 4: 3.0}).tolist()
    )


def test_on_demand_view_over_windows_is_computed_in_training_sets(repo: Path) -> None:
    plan = ensure_plan(repo)
    labels = pd.read_parquet(repo / "data" / "labels.parquet")
    inputs = labels[["event_timestamp", "zone_id"]]
    found = historical_features(repo, plan, "with_ratio", inputs, lambda _rows: None)
    assert list(found.columns) == [
        "zone_activity__sum_trip_requested_60s",
        "demand__demand_ratio",
        "demand__requests_per_km2",
        "zone_info__area_km2",
    ]
    expected = brute_force(repo, plan, labels)
    requested = np.array(expected["zone_activity__sum_trip_requested_300s"], np.float64)
    drivers = np.array(expected["zone_activity__sum_driver_available_300s"], np.float64)
    assert_column(found["demand__demand_ratio"], list(requested / (drivers + 1)), "ratio")
    assert_column(
        found["zone_activity__sum_trip_requested_60s"],
        expected["zone_activity__sum_trip_requested_60s"],
        "sum_60s",
    )


def test_offline_scoring_fills_windows_as_of_each_row(repo: Path, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    result = train(model_kind(repo, "demand"), repo, registry)
    plan = ensure_plan(repo)
    loaded = registry.load(f"demand:{result.registration.version}", plan)
    model = build_offline_model(loaded, plan, repo)
    rows = pd.read_parquet(repo / "data" / "labels.parquet")
    at_ns = rows["event_timestamp"].dt.as_unit("ns").astype("int64").to_numpy()
    entities = {"zone_id": rows["zone_id"].to_numpy()}
    matrix, missing = model.features(entities, {}, at_ns, len(rows))
    expected = brute_force(repo, plan, rows)
    for name, values in expected.items():
        assert_column(matrix[:, model.feature_names.index(name)], values, name)
    empty = (rows["zone_id"] == 4).to_numpy()
    assert (missing[empty] == 7).all()  # a zone never pushed: every window is missing


def test_offline_scoring_computes_on_demand_views_over_windows(repo: Path, tmp_path: Path) -> None:
    """The on-demand view reads two windowed sums the model does not use itself."""
    registry = ModelRegistry(tmp_path / "models")
    result = train(model_kind(repo, "ratio"), repo, registry)
    plan = ensure_plan(repo)
    loaded = registry.load(f"ratio:{result.registration.version}", plan)
    assert "zone_activity__sum_trip_requested_300s" not in loaded.card.feature_refs
    model = build_offline_model(loaded, plan, repo)
    rows = pd.read_parquet(repo / "data" / "labels.parquet")
    at_ns = rows["event_timestamp"].dt.as_unit("ns").astype("int64").to_numpy()
    matrix, _ = model.features({"zone_id": rows["zone_id"].to_numpy()}, {}, at_ns, len(rows))
    expected = brute_force(repo, plan, rows)
    requested = np.array(expected["zone_activity__sum_trip_requested_300s"], np.float64)
    drivers = np.array(expected["zone_activity__sum_driver_available_300s"], np.float64)
    ratio = matrix[:, model.feature_names.index("demand__demand_ratio")]
    assert_column(ratio, list(requested / (drivers + 1)), "ratio")
    assert (ratio > 0).any()
    area = rows["zone_id"].map({1: 1.5, 2: 2.0, 3: 0.5, 4: 3.0}).to_numpy(np.float64)
    density = matrix[:, model.feature_names.index("demand__requests_per_km2")]
    assert_column(density, list(requested / area), "requests per km2")  # a plain view read too
