"""The sample world: deterministic, declared schema, labels that follow the features."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.errors import UsageError
from serving.sample.world import TABLES, WorldSpec, generate

END = datetime(2026, 11, 1, tzinfo=UTC)
TS = pa.timestamp("us", tz="UTC")


def small(out: Path, seed: int = 7) -> WorldSpec:
    return WorldSpec(out=out, drivers=200, zones=16, hours=24, seed=seed, end=END)


def digest(folder: Path) -> dict[str, str]:
    return {t: hashlib.sha256((folder / f"{t}.parquet").read_bytes()).hexdigest() for t in TABLES}


def test_generate_same_seed_gives_identical_files(tmp_path: Path) -> None:
    generate(small(tmp_path / "a"))
    generate(small(tmp_path / "b"))
    generate(small(tmp_path / "c", seed=8))
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_generate_writes_declared_schema(world_data: Path) -> None:
    driver = pq.read_schema(world_data / "driver_stats.parquet")
    assert driver.field("driver_id").type == pa.int64()
    assert driver.field("event_timestamp").type == TS
    assert driver.field("acceptance_rate").type == pa.float32()
    assert driver.field("trips_today").type == pa.int64()
    assert driver.field("vehicle_type").type == pa.string()
    zone = pq.read_schema(world_data / "zone_stats.parquet")
    assert zone.field("open_requests").type == pa.int64()
    assert zone.field("surge_15m").type == pa.float64()
    route = pq.read_schema(world_data / "route_stats.parquet")
    assert {"pickup_zone_id", "dropoff_zone_id", "avg_duration_s_7d"} <= set(route.names)
    trips = pq.read_schema(world_data / "trips.parquet")
    assert trips.field("duration_s").type == pa.float64()
    assert trips.field("request_ts_s").type == pa.int64()
    surge = pq.read_schema(world_data / "surge_observations.parquet")
    assert surge.field("surge_multiplier").type == pa.float64()


def test_counts_match_the_spec(tmp_path: Path) -> None:
    spec = small(tmp_path)
    counts = generate(spec)
    assert counts["driver_stats"] == 200 * 25  # one snapshot before the window, then hourly
    assert counts["zone_stats"] == 16 * 25 * 12
    assert counts["trips"] == 500 * 24
    assert counts["surge_observations"] == 300 * 24
    assert sum(counts.values()) == spec.expected_rows


def test_labels_fall_inside_the_window(tmp_path: Path) -> None:
    generate(small(tmp_path))
    trips = pq.read_table(tmp_path / "trips.parquet").to_pandas()
    assert trips["event_timestamp"].min() >= pd_ts(END) - np.timedelta64(24, "h")
    assert trips["event_timestamp"].max() < pd_ts(END)
    assert (trips["request_ts_s"] == trips["event_timestamp"].astype("int64") // 10**6).all()


def pd_ts(ts: datetime) -> np.datetime64:
    import pandas as pd

    return pd.Timestamp(ts)


@pytest.fixture(scope="module")
def fixed_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world with a fixed end (the shared test world ends 'now': its hours vary by run)."""
    out = tmp_path_factory.mktemp("fixed-world")
    generate(WorldSpec(out=out, drivers=300, zones=16, hours=48, end=END))
    return out


def test_trip_duration_follows_distance_and_traffic(fixed_world: Path) -> None:
    trips = pq.read_table(fixed_world / "trips.parquet").to_pandas()
    lat = np.radians(trips[["pickup_lat", "dropoff_lat"]].to_numpy())
    dlat = lat[:, 1] - lat[:, 0]
    dlon = np.radians(trips["dropoff_lon"] - trips["pickup_lon"]).to_numpy()
    distance = np.hypot(dlat, dlon * np.cos(lat[:, 0]))
    assert np.corrcoef(distance, trips["duration_s"])[0, 1] > 0.8
    long = distance > np.median(distance)
    pace = (trips["duration_s"] / np.maximum(distance, 1e-9))[long]
    hour = ((trips["request_ts_s"] % 86_400) // 3600)[long]
    rush = pace[hour.isin([8, 18])].median()
    night = pace[hour.isin([2, 3])].median()
    assert rush > 1.1 * night  # traffic slows rush-hour trips (no effect: ~1.0)


def test_surge_follows_demand_more_than_its_lagged_average(fixed_world: Path) -> None:
    import pandas as pd

    surge = pq.read_table(fixed_world / "surge_observations.parquet").to_pandas()
    zones = pq.read_table(fixed_world / "zone_stats.parquet").to_pandas()
    joined = pd.merge_asof(
        surge.sort_values("event_timestamp"),
        zones.sort_values("event_timestamp"),
        on="event_timestamp",
        by="zone_id",
    )
    label = joined["surge_multiplier"]
    by_ratio = np.corrcoef(joined["demand_supply_ratio"], label)[0, 1]
    by_lagged = np.corrcoef(joined["surge_15m"], label)[0, 1]
    assert by_ratio > 0.7
    assert by_ratio > by_lagged + 0.05


def test_generate_keeps_some_nulls_for_new_drivers(world_data: Path) -> None:
    ratings = pq.read_table(world_data / "driver_stats.parquet", columns=["avg_rating"])
    nulls = ratings.column("avg_rating").null_count
    assert 0 < nulls < 0.05 * ratings.num_rows


@pytest.mark.parametrize(
    ("field", "value"), [("drivers", 0), ("zones", 2), ("hours", 1), ("hours", 10**6)]
)
def test_nonsense_sizes_are_refused(tmp_path: Path, field: str, value: int) -> None:
    size: dict[str, Any] = {field: value}
    spec = WorldSpec(out=tmp_path, end=END, **size)
    with pytest.raises(UsageError, match=field):
        generate(spec)


def test_unwritable_folder_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="cannot write"):
        generate(small(blocker / "out"))
