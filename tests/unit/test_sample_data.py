"""The sample world: deterministic, declared schema, labels that follow the features, zone
events that follow the zone process."""

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
from serving.sample.zone_events import ZoneRates, event_chunks, recent_activity

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
    events = pq.read_schema(world_data / "zone_events.parquet")
    assert events == pa.schema(
        [
            ("zone_id", pa.int64()),
            ("event_timestamp", TS),
            ("trip_requested", pa.int64()),
            ("driver_available", pa.int64()),
        ]
    )


def test_counts_match_the_spec(tmp_path: Path) -> None:
    spec = small(tmp_path)
    counts = generate(spec)
    assert counts["driver_stats"] == 200 * 25  # one snapshot before the window, then hourly
    assert counts["zone_stats"] == 16 * 25 * 12
    assert counts["trips"] == 500 * 24
    assert counts["surge_observations"] == 300 * 24
    events = counts.pop("zone_events")  # drawn: the spec only estimates it
    assert 0.5 * events < spec.expected_rows - sum(counts.values()) < 1.5 * events


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


def test_default_world_has_a_bounded_event_volume(tmp_path: Path) -> None:
    counts = generate(WorldSpec(out=tmp_path, drivers=10, end=END))  # 64 zones x 48 h
    assert 500_000 <= counts["zone_events"] <= 2_000_000
    row_groups = pq.ParquetFile(tmp_path / "zone_events.parquet").metadata.num_row_groups
    assert row_groups > 1  # written chunk by chunk, not held whole


@pytest.fixture(scope="module")
def fixed_events(fixed_world: Path) -> Any:
    import pandas as pd

    events = pd.read_parquet(fixed_world / "zone_events.parquet")
    zones = pd.read_parquet(fixed_world / "zone_stats.parquet")
    events["slot"] = events["event_timestamp"].dt.floor("5min")
    return events, zones


def test_events_are_single_sorted_and_inside_the_zone_table(fixed_events: Any) -> None:
    events, zones = fixed_events
    assert ((events["trip_requested"] + events["driver_available"]) == 1).all()
    assert events["event_timestamp"].is_monotonic_increasing
    assert events["event_timestamp"].min() >= zones["event_timestamp"].min()
    assert events["event_timestamp"].max() < pd_ts(END)
    assert set(events["zone_id"]) == set(zones["zone_id"])


def test_events_follow_the_zone_snapshots(fixed_events: Any) -> None:
    events, zones = fixed_events
    hour = "event_timestamp"
    events = events.assign(**{hour: events["event_timestamp"].dt.floor("1h")})
    zones = zones.assign(**{hour: zones["event_timestamp"].dt.floor("1h")})
    columns = ["trip_requested", "driver_available"]
    joined = (
        zones.groupby(["zone_id", hour])[["open_requests", "available_drivers"]]
        .sum()
        .join(events.groupby(["zone_id", hour])[columns].sum(), how="left")
        .fillna(0)
    )
    # One demand/supply process: a zone's requests per hour track its snapshots' open
    # requests, its drivers becoming available the available drivers (observed ~0.9).
    assert np.corrcoef(joined["trip_requested"], joined["open_requests"])[0, 1] > 0.8
    assert np.corrcoef(joined["driver_available"], joined["available_drivers"])[0, 1] > 0.8
    # Bursts add to the process's rate: ~1.1-1.25 times as many events as the snapshots show.
    assert 1.0 < joined["trip_requested"].sum() / joined["open_requests"].sum() < 1.5
    assert 1.0 < joined["driver_available"].sum() / joined["available_drivers"].sum() < 1.5


def test_events_burst_within_a_slot(fixed_events: Any) -> None:
    """Minute counts vary more than a steady rate per slot would (Poisson: variance = mean):
    the bursts a snapshot at the slot's start does not show."""
    events, _ = fixed_events
    trips = events[events["trip_requested"] == 1]
    minute = trips["event_timestamp"].dt.floor("1min")
    per_minute = trips.groupby(["zone_id", "slot", minute]).size()
    per_minute = per_minute.unstack(fill_value=0).stack()  # minutes without events count 0
    by_slot = per_minute.groupby(level=["zone_id", "slot"])
    dispersion = (by_slot.var() / by_slot.mean().clip(lower=1e-9)).median()
    assert dispersion > 1.3


def test_recent_activity_counts_the_events_before_each_label() -> None:
    rng = np.random.default_rng(3)
    slots = 12 * 6
    start_s = 1_700_000_000 - 1_700_000_000 % 300
    rates = ZoneRates(
        slot_start_s=start_s + 300 * np.arange(slots, dtype=np.int64),
        demand=rng.uniform(5, 20, (5, slots)),
        supply=rng.uniform(5, 20, (5, slots)),
    )
    ts_us = np.concatenate([c.ts_us for c in event_chunks(rates, seed=1)])
    zone_id = np.concatenate([c.zone_id for c in event_chunks(rates, seed=1)])
    trip = np.concatenate([c.trip_requested for c in event_chunks(rates, seed=1)])
    labels = np.sort(rng.integers(start_s + 900, start_s + 300 * slots, 300))
    zone = rng.integers(0, 5, len(labels))
    got = recent_activity(rates, 1, labels, zone, (60, 300, 900))
    for w in (60, 300, 900):
        for i in range(0, len(labels), 7):
            t_us = labels[i] * 1_000_000
            inside = (zone_id == zone[i]) & (ts_us > t_us - w * 1_000_000) & (ts_us <= t_us)
            assert got.trips[w][i] == trip[inside].sum()
            assert got.drivers[w][i] == (1 - trip[inside]).sum()


def test_surge_follows_the_zone_s_last_minutes(fixed_world: Path, fixed_events: Any) -> None:
    """What the 5-minute snapshot misses and the events show moves the label: its residual
    after the snapshot's ratio tracks the last 5 minutes' requests per driver."""
    import pandas as pd

    events, zones = fixed_events
    surge = pq.read_table(fixed_world / "surge_observations.parquet").to_pandas()
    joined = pd.merge_asof(
        surge.sort_values("event_timestamp"),
        zones.sort_values("event_timestamp"),
        on="event_timestamp",
        by="zone_id",
    )
    ts_s = joined["request_ts_s"].to_numpy()
    zone = joined["zone_id"].to_numpy()
    recent = np.zeros((2, len(joined)))
    for z in np.unique(zone):
        mine = events[events["zone_id"] == z]
        times = mine["event_timestamp"].dt.as_unit("us").astype("int64").to_numpy()
        for row, column in enumerate(("trip_requested", "driver_available")):
            running = np.concatenate([[0], np.cumsum(mine[column].to_numpy())])
            at = ts_s[zone == z] * 1_000_000
            hi = np.searchsorted(times, at, side="right")
            lo = np.searchsorted(times, at - 300_000_000, side="right")
            recent[row, zone == z] = running[hi] - running[lo]
    pressure = recent[0] / (recent[1] + 1)
    label = joined["surge_multiplier"].to_numpy()
    ratio = joined["demand_supply_ratio"].to_numpy()
    residual = label - np.polyval(np.polyfit(ratio, label, 1), ratio)
    assert np.corrcoef(pressure, residual)[0, 1] > 0.5  # observed ~0.75
    assert np.corrcoef(ratio, residual)[0, 1] == pytest.approx(0, abs=1e-6)


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
