"""The sample ride-hailing world: deterministic Parquet feature tables and label tables.

A city of zones on a grid. Zones carry a demand/supply process every 5 minutes (diurnal
demand, rain spells, traffic); drivers an hourly snapshot; routes a daily 7-day summary. Two
label tables are drawn from the *same* state the feature rows show, as of the label's time:

- trips: duration depends on road distance, pickup/dropoff traffic, rain, the driver's speed
  and vehicle, so a model beats the route average;
- surge observations: the realised multiplier follows the zone's current demand/supply ratio
  and rain, which the lagged `surge_15m` only trails, and the zone's trip requests and driver
  arrivals over the last 1 and 5 minutes, which only the raw events show.

Beside them, `zone_events` holds the raw events (one row per trip request or driver becoming
available) drawn from the same demand/supply process with bursts of a few minutes that the
5-minute zone_stats snapshot misses (serving/sample/zone_events.py).

Invariant: same arguments and seed -> byte-identical files. Memory is bounded by one chunk of
driver rows, whatever `drivers` is, and one chunk of events; tables are written row group by
row group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from serving.errors import UsageError
from serving.sample.zone_events import ZoneRates, event_chunks, recent_activity

SLOT_S = 300  # zone_stats cadence: 5 minutes
CITY_LAT, CITY_LON = 44.078, 10.097  # Carrara, Tuscany
ZONE_SIZE_KM = 1.5
KM_PER_DEG_LAT = 111.32
VEHICLE_TYPES = ("economy", "comfort", "xl", "moto")
VEHICLE_SPEED = np.array([1.0, 1.03, 0.95, 1.18])
DRIVER_CHUNK = 250_000
TS_TYPE = pa.timestamp("us", tz="UTC")

TABLES = (
    "driver_stats",
    "zone_stats",
    "route_stats",
    "trips",
    "zone_events",
    "surge_observations",
)
EVENTS_PER_ZONE_HOUR = 400  # rough, for the progress bar: the event count is drawn


@dataclass(frozen=True)
class WorldSpec:
    out: Path
    drivers: int = 2_000
    zones: int = 64
    hours: int = 48
    seed: int = 7
    end: datetime = datetime(2026, 11, 1, tzinfo=UTC)
    trips: int = 0  # 0 -> 500 per hour
    surge_observations: int = 0  # 0 -> 300 per hour

    def validated(self) -> WorldSpec:
        for name, low, high in (
            ("drivers", 1, 100_000_000),
            ("zones", 4, 10_000),
            ("hours", 2, 24 * 366),
            ("trips", 0, 100_000_000),
            ("surge_observations", 0, 100_000_000),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise UsageError(
                    f"--{name.replace('_', '-')} must be in [{low}, {high}], got {value}"
                )
        if self.end.tzinfo is None:
            raise UsageError("--end must carry a time zone (e.g. 2026-11-01T00:00:00Z)")
        return self

    @property
    def start(self) -> datetime:
        return self.end - timedelta(hours=self.hours)

    @property
    def expected_rows(self) -> int:
        """Rows of every table; the events' count is an estimate (it is drawn)."""
        zones_rows = self.zones * (self.hours + 1) * 3600 // SLOT_S
        route_rows = self.zones**2 * len(self.route_days)
        return (
            zones_rows
            + route_rows
            + self.drivers * (self.hours + 1)
            + self.n_trips
            + self.n_surge
            + self.zones * (self.hours + 1) * EVENTS_PER_ZONE_HOUR
        )

    @property
    def route_days(self) -> range:
        """Daily route snapshots (epoch s), from the day before the window's first day."""
        first_day = (_epoch_s(self.start) // 86_400 - 1) * 86_400
        return range(first_day, _epoch_s(self.end), 86_400)

    @property
    def n_trips(self) -> int:
        return self.trips or 500 * self.hours

    @property
    def n_surge(self) -> int:
        return self.surge_observations or 300 * self.hours


@dataclass(frozen=True)
class City:
    """Zone geometry and the zone state per 5-minute slot (what zone_stats rows show)."""

    side: int
    center_lat: np.ndarray
    center_lon: np.ndarray
    slot_start_s: np.ndarray  # (slots,)
    open_requests: np.ndarray  # (zones, slots)
    rates: ZoneRates  # expected trip requests and driver arrivals per slot (the events')
    available_drivers: np.ndarray
    ratio: np.ndarray
    wait_s: np.ndarray
    surge_15m: np.ndarray
    rain_mm: np.ndarray
    traffic: np.ndarray

    def slot_of(self, ts_s: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.slot_start_s, ts_s, side="right") - 1


Progress = Callable[[str, int], None]


def generate(spec: WorldSpec, progress: Progress | None = None) -> dict[str, int]:
    """Write every table into `spec.out`; returns rows written per table."""
    spec = spec.validated()
    try:
        spec.out.mkdir(parents=True, exist_ok=True)
        probe = spec.out / ".carrara-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to output folder {spec.out}: {exc.strerror}") from exc
    report = progress or (lambda _table, _rows: None)
    rng = np.random.default_rng(spec.seed)
    city = _build_city(spec, rng)
    drivers = _driver_profiles(spec.drivers, np.random.default_rng([spec.seed, 1]))
    counts = {
        "zone_stats": _write(
            spec.out / "zone_stats.parquet", _zone_batches(city), report, "zone_stats"
        ),
        "route_stats": _write(
            spec.out / "route_stats.parquet", _route_batches(spec, city), report, "route_stats"
        ),
        "driver_stats": _write(
            spec.out / "driver_stats.parquet",
            _driver_batches(spec, drivers, np.random.default_rng([spec.seed, 2])),
            report,
            "driver_stats",
        ),
        "trips": _write(
            spec.out / "trips.parquet",
            _trip_batches(spec, city, drivers, np.random.default_rng([spec.seed, 3])),
            report,
            "trips",
        ),
        "zone_events": _write(
            spec.out / "zone_events.parquet",
            _event_batches(city, spec.seed),
            report,
            "zone_events",
        ),
        "surge_observations": _write(
            spec.out / "surge_observations.parquet",
            _surge_batches(spec, city, np.random.default_rng([spec.seed, 4])),
            report,
            "surge_observations",
        ),
    }
    return counts


def _write(path: Path, batches: Iterator[pa.Table], report: Progress, table: str) -> int:
    """Stream tables into one Parquet file (a row group per batch), atomically."""
    tmp = path.with_suffix(".parquet.tmp")
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        for batch in batches:
            if writer is None:
                writer = pq.ParquetWriter(tmp, batch.schema, compression="zstd")
            writer.write_table(batch)
            rows += batch.num_rows
            report(table, batch.num_rows)
    finally:
        if writer is not None:
            writer.close()
    tmp.replace(path)
    return rows


def _epoch_s(ts: datetime) -> int:
    return int(ts.timestamp())


def _ts_column(seconds: np.ndarray) -> pa.Array:
    return pa.array(seconds.astype(np.int64) * 1_000_000, type=pa.int64()).cast(TS_TYPE)


# --- the city ---------------------------------------------------------------------------


def _build_city(spec: WorldSpec, rng: np.random.Generator) -> City:
    side = int(np.ceil(np.sqrt(spec.zones)))
    zone_ids = np.arange(spec.zones)
    row, col = zone_ids // side, zone_ids % side
    km_per_deg_lon = KM_PER_DEG_LAT * np.cos(np.radians(CITY_LAT))
    center_lat = CITY_LAT + (row - side / 2 + 0.5) * ZONE_SIZE_KM / KM_PER_DEG_LAT
    center_lon = CITY_LON + (col - side / 2 + 0.5) * ZONE_SIZE_KM / km_per_deg_lon
    centrality = np.exp(-((row - side / 2) ** 2 + (col - side / 2) ** 2) / (side**2 / 4))

    # One slot before the window so the first labels have a feature row to look back on.
    start_s = _epoch_s(spec.start) - 3600
    slots = (spec.hours + 1) * 3600 // SLOT_S
    slot_start_s = start_s + SLOT_S * np.arange(slots, dtype=np.int64)
    hour = (slot_start_s % 86_400) / 3600.0
    diurnal = 0.55 + 0.45 * np.exp(-((hour - 8.5) ** 2) / 3) + 0.6 * np.exp(-((hour - 18) ** 2) / 4)

    rain = np.zeros(slots)
    level = 0.0
    shocks = rng.normal(0, 0.35, slots)
    for i in range(slots):  # a city-wide rain spell process, one step per slot
        level = max(0.0, 0.97 * level + shocks[i] - 0.02)
        rain[i] = level
    rain_mm = np.clip(rain[None, :] * (0.8 + 0.4 * rng.random((spec.zones, 1))), 0, None)

    demand = (4 + 26 * centrality[:, None]) * diurnal[None, :] * (1 + 0.25 * rain_mm)
    supply = (6 + 18 * centrality[:, None]) * (0.7 + 0.3 * diurnal[None, :]) / (1 + 0.1 * rain_mm)
    open_requests = rng.poisson(demand)
    available = rng.poisson(supply)
    ratio = open_requests / (available + 1.0)
    instant_surge = np.clip(1 + 0.6 * np.maximum(ratio - 0.8, 0), 1.0, 3.5)
    surge_15m = np.empty_like(instant_surge)
    surge_15m[:, :3] = 1.0
    for lag in range(3, slots, 1):  # trailing mean of the previous 15 minutes, lagged
        surge_15m[:, lag] = instant_surge[:, lag - 3 : lag].mean(axis=1)
    traffic = np.clip(
        0.3
        + 0.5 * diurnal[None, :] * (0.6 + 0.6 * centrality[:, None])
        + 0.05 * rain_mm
        + rng.normal(0, 0.03, (spec.zones, slots)),
        0.05,
        2.0,
    )
    wait_s = 60 + 90 * ratio + 20 * rain_mm + rng.normal(0, 10, ratio.shape)
    return City(
        side=side,
        center_lat=center_lat,
        center_lon=center_lon,
        slot_start_s=slot_start_s,
        open_requests=open_requests.astype(np.int64),
        rates=ZoneRates(slot_start_s, demand, supply),
        available_drivers=available.astype(np.int64),
        ratio=ratio,
        wait_s=np.clip(wait_s, 10, None),
        surge_15m=surge_15m,
        rain_mm=rain_mm,
        traffic=traffic,
    )


def _zone_batches(city: City) -> Iterator[pa.Table]:
    zones, slots = city.ratio.shape
    for first in range(0, slots, 288):  # one row group per day of slots
        last = min(slots, first + 288)
        ts = np.repeat(city.slot_start_s[first:last], zones)
        zone_ids = np.tile(np.arange(zones, dtype=np.int64), last - first)
        take = (slice(None), slice(first, last))

        def flat(m: np.ndarray, take: tuple[slice, slice] = take) -> np.ndarray:
            return m[take].T.reshape(-1)

        yield pa.table(
            {
                "zone_id": zone_ids,
                "event_timestamp": _ts_column(ts),
                "created": _ts_column(ts + 20),
                "open_requests": flat(city.open_requests),
                "available_drivers": flat(city.available_drivers),
                "demand_supply_ratio": flat(city.ratio),
                "avg_pickup_wait_s": flat(city.wait_s),
                "surge_15m": flat(city.surge_15m),
                "rain_mm": flat(city.rain_mm),
                "traffic_index": flat(city.traffic),
            }
        )


def _road_km(city: City, pickup: np.ndarray, dropoff: np.ndarray) -> np.ndarray:
    """Manhattan distance between zone centres on the grid, at least half a zone."""
    dr = np.abs(pickup // city.side - dropoff // city.side)
    dc = np.abs(pickup % city.side - dropoff % city.side)
    road_km: np.ndarray = np.maximum((dr + dc) * ZONE_SIZE_KM, ZONE_SIZE_KM / 2)
    return road_km


def _base_speed_kph(traffic: np.ndarray, rain_mm: np.ndarray) -> np.ndarray:
    return 42.0 / (1 + 1.4 * traffic) / (1 + 0.04 * rain_mm)


def _route_batches(spec: WorldSpec, city: City) -> Iterator[pa.Table]:
    zones = len(city.center_lat)
    pickup = np.repeat(np.arange(zones, dtype=np.int64), zones)
    dropoff = np.tile(np.arange(zones, dtype=np.int64), zones)
    road_km = _road_km(city, pickup, dropoff)
    mean_traffic = city.traffic.mean(axis=1)
    speed = _base_speed_kph((mean_traffic[pickup] + mean_traffic[dropoff]) / 2, np.zeros(1))
    rng = np.random.default_rng([spec.seed, 5])
    for day in spec.route_days:
        avg = road_km / speed * 3600 * (1 + rng.normal(0, 0.03, len(pickup)))
        yield pa.table(
            {
                "pickup_zone_id": pickup,
                "dropoff_zone_id": dropoff,
                "event_timestamp": _ts_column(np.full(len(pickup), day)),
                "created": _ts_column(np.full(len(pickup), day + 600)),
                "avg_duration_s_7d": avg,
                "p90_duration_s_7d": avg * 1.35,
                "trips_7d": rng.poisson(40, len(pickup)).astype(np.int64),
                "avg_distance_km": road_km * (1 + rng.normal(0, 0.02, len(pickup))),
            }
        )


@dataclass(frozen=True)
class Drivers:
    vehicle: np.ndarray  # index into VEHICLE_TYPES
    skill: np.ndarray  # speed multiplier, ~1
    rating: np.ndarray
    acceptance: np.ndarray


def _driver_profiles(n: int, rng: np.random.Generator) -> Drivers:
    return Drivers(
        vehicle=rng.choice(len(VEHICLE_TYPES), n, p=[0.55, 0.2, 0.15, 0.1]),
        skill=np.clip(rng.normal(1.0, 0.12, n), 0.6, 1.5),
        rating=np.clip(rng.normal(4.7, 0.2, n), 3.0, 5.0),
        acceptance=np.clip(rng.beta(8, 2, n), 0.05, 1.0),
    )


def _driver_batches(
    spec: WorldSpec, drivers: Drivers, rng: np.random.Generator
) -> Iterator[pa.Table]:
    first_hour = _epoch_s(spec.start) - 3600
    vehicle_names = np.array(VEHICLE_TYPES, dtype=object)
    for h in range(spec.hours + 1):
        ts = first_hour + 3600 * h
        hour_of_day = (ts % 86_400) // 3600
        for lo in range(0, spec.drivers, DRIVER_CHUNK):
            hi = min(spec.drivers, lo + DRIVER_CHUNK)
            n = hi - lo
            vehicle = drivers.vehicle[lo:hi]
            speed = 32 * drivers.skill[lo:hi] * VEHICLE_SPEED[vehicle] + rng.normal(0, 0.8, n)
            rating = (drivers.rating[lo:hi] + rng.normal(0, 0.02, n)).astype(np.float32)
            rating_col = pa.array(rating, mask=rng.random(n) < 0.01)  # new drivers: no rating
            yield pa.table(
                {
                    "driver_id": np.arange(lo + 1, hi + 1, dtype=np.int64),
                    "event_timestamp": _ts_column(np.full(n, ts)),
                    "created": _ts_column(np.full(n, ts + 60)),
                    "acceptance_rate": np.clip(
                        drivers.acceptance[lo:hi] + rng.normal(0, 0.02, n), 0, 1
                    ).astype(np.float32),
                    "cancel_rate": np.clip(rng.beta(1, 20, n), 0, 1).astype(np.float32),
                    "avg_rating": rating_col,
                    "trips_today": rng.poisson(1.2 * hour_of_day, n).astype(np.int64),
                    "online_minutes_today": rng.integers(0, 60 * hour_of_day + 1, n).astype(
                        np.int64
                    ),
                    "avg_speed_kph_7d": speed.astype(np.float32),
                    "vehicle_type": pa.array(vehicle_names[vehicle], type=pa.string()),
                }
            )


def _label_times(spec: WorldSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.integers(_epoch_s(spec.start), _epoch_s(spec.end), n)).astype(np.int64)


def _trip_batches(
    spec: WorldSpec, city: City, drivers: Drivers, rng: np.random.Generator
) -> Iterator[pa.Table]:
    n = spec.n_trips
    ts = _label_times(spec, n, rng)
    slot = city.slot_of(ts)
    zones = len(city.center_lat)
    pickup = rng.integers(0, zones, n)
    dropoff = np.where(rng.random(n) < 0.3, pickup, rng.integers(0, zones, n))
    driver_idx = rng.integers(0, spec.drivers, n)
    # Positions in km from each zone centre; the straight line is measured in km, then mapped
    # to degrees for the request (the model sees it again through the haversine transform).
    half = ZONE_SIZE_KM / 2
    pickup_dx, pickup_dy, dropoff_dx, dropoff_dy = rng.uniform(-half, half, (4, n))
    km_per_deg_lon = KM_PER_DEG_LAT * np.cos(np.radians(CITY_LAT))
    pickup_lat = city.center_lat[pickup] + pickup_dy / KM_PER_DEG_LAT
    pickup_lon = city.center_lon[pickup] + pickup_dx / km_per_deg_lon
    dropoff_lat = city.center_lat[dropoff] + dropoff_dy / KM_PER_DEG_LAT
    dropoff_lon = city.center_lon[dropoff] + dropoff_dx / km_per_deg_lon
    east_km = (dropoff % city.side - pickup % city.side) * ZONE_SIZE_KM + dropoff_dx - pickup_dx
    north_km = (dropoff // city.side - pickup // city.side) * ZONE_SIZE_KM + dropoff_dy - pickup_dy
    straight_km = np.hypot(east_km, north_km)
    road_km = np.maximum(1.25 * straight_km, 0.3)
    traffic = (city.traffic[pickup, slot] + city.traffic[dropoff, slot]) / 2
    rain = (city.rain_mm[pickup, slot] + city.rain_mm[dropoff, slot]) / 2
    speed = _base_speed_kph(traffic, rain) * drivers.skill[driver_idx]
    speed *= VEHICLE_SPEED[drivers.vehicle[driver_idx]] ** (1 + traffic)  # motos weave through
    duration = (road_km / speed * 3600 + 60) * rng.lognormal(0, 0.08, n)
    yield pa.table(
        {
            "trip_id": np.arange(1, n + 1, dtype=np.int64),
            "event_timestamp": _ts_column(ts),
            "driver_id": (driver_idx + 1).astype(np.int64),
            "pickup_zone_id": pickup.astype(np.int64),
            "dropoff_zone_id": dropoff.astype(np.int64),
            "pickup_lat": pickup_lat,
            "pickup_lon": pickup_lon,
            "dropoff_lat": dropoff_lat,
            "dropoff_lon": dropoff_lon,
            "request_ts_s": ts,
            "duration_s": duration,
        }
    )


def _surge_batches(spec: WorldSpec, city: City, rng: np.random.Generator) -> Iterator[pa.Table]:
    n = spec.n_surge
    ts = _label_times(spec, n, rng)
    slot = city.slot_of(ts)
    zone = rng.integers(0, len(city.center_lat), n)
    ratio = city.ratio[zone, slot]
    rain = city.rain_mm[zone, slot]
    hour = (ts % 86_400) // 3600
    rush = np.isin(hour, (7, 8, 17, 18, 19)).astype(np.float64)
    noise = rng.normal(0, 0.03, n)
    multiplier = 1 + 0.55 * np.maximum(ratio - 0.7, 0) + 0.04 * rain + 0.08 * rush
    multiplier += _recent_pressure_premium(city, spec.seed, ts, zone)
    multiplier = np.clip(multiplier + noise, 1.0, 4.0)
    yield pa.table(
        {
            "zone_id": zone.astype(np.int64),
            "event_timestamp": _ts_column(ts),
            "request_ts_s": ts,
            "surge_multiplier": multiplier,
        }
    )


def _recent_pressure_premium(city: City, seed: int, ts: np.ndarray, zone: np.ndarray) -> np.ndarray:
    """The surge engine's reaction to the last minutes: trip requests per available driver
    over the last 5 minutes and the last minute, as the zone's events show them."""
    recent = recent_activity(city.rates, seed, ts, zone, (60, 300))
    pressure_1m = recent.trips[60] / (recent.drivers[60] + 1.0)
    pressure_5m = recent.trips[300] / (recent.drivers[300] + 1.0)
    premium: np.ndarray = 0.15 * np.maximum(pressure_5m - 1.0, 0) + 0.05 * np.maximum(
        pressure_1m - 1.5, 0
    )
    return premium


def _event_batches(city: City, seed: int) -> Iterator[pa.Table]:
    for chunk in event_chunks(city.rates, seed):
        yield pa.table(
            {
                "zone_id": chunk.zone_id,
                "event_timestamp": pa.array(chunk.ts_us, type=pa.int64()).cast(TS_TYPE),
                "trip_requested": chunk.trip_requested,
                "driver_available": 1 - chunk.trip_requested,
            }
        )
