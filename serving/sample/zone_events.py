"""The sample world's raw zone events: one row per trip request or driver becoming available.

The zone_stats snapshot is taken at each 5-minute slot's start; the events show what happens
between snapshots. Their rates follow the same demand/supply process, per minute, with short
bursts on top (a concert letting out: demand x2-3.5 for 2-6 minutes; a wave of drivers
finishing trips nearby: supply x1.8-3) that no snapshot shows. Surge observations respond to
the last minutes of these events (`recent_activity`), so windowed features over them pay.

Memory is bounded by one chunk of events (about EVENT_BUDGET zone-minutes) whatever the size
of the world; bursts are carried across chunks. `event_chunks` is deterministic: the table
writer and the label lookback each run it and see the very same events.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

MINUTE_US = 60_000_000
MINUTES_PER_SLOT = 5
EVENT_BUDGET = 100_000  # zone-minutes per chunk: ~0.5 M events
MAX_CHUNK_MINUTES = 1_440  # a day: one Parquet row group per day, as zone_stats
LOOKBACK_S = 900  # the longest window a label looks back on; a chunk is at least this long
BURST_MINUTES = (2, 6)  # inclusive
DEMAND_BURSTS = (1 / 30, 1.0, 2.5)  # start probability per zone-minute, extra demand range
SUPPLY_BURSTS = (1 / 45, 0.8, 2.0)


@dataclass(frozen=True)
class ZoneRates:
    """Expected trip requests and driver arrivals per zone and 5-minute slot."""

    slot_start_s: np.ndarray  # (slots,), contiguous 5-minute slots
    demand: np.ndarray  # (zones, slots): trip requests per slot
    supply: np.ndarray  # (zones, slots): drivers becoming available per slot


@dataclass(frozen=True)
class EventChunk:
    """Events of [start_s, end_s), sorted by (time, zone, kind)."""

    start_s: int
    end_s: int
    zone_id: np.ndarray  # int64
    ts_us: np.ndarray  # int64, UTC microseconds
    trip_requested: np.ndarray  # int64 0/1; driver_available is 1 - trip_requested


@dataclass(frozen=True)
class RecentActivity:
    """Per label row: trip requests and driver arrivals in its zone over (t - W, t]."""

    trips: dict[int, np.ndarray]  # window seconds -> counts
    drivers: dict[int, np.ndarray]


def chunk_minutes(zones: int) -> int:
    """Minutes per chunk: bounded memory, and never shorter than the longest lookback."""
    return int(np.clip(EVENT_BUDGET // zones, LOOKBACK_S // 60, MAX_CHUNK_MINUTES))


def event_chunks(rates: ZoneRates, seed: int) -> Iterator[EventChunk]:
    """The events over every slot of `rates`, chunk by chunk (same rates + seed -> same)."""
    rng = np.random.default_rng([seed, 6])
    zones, slots = rates.demand.shape
    minutes = slots * MINUTES_PER_SLOT
    step = chunk_minutes(zones)
    carry = _Bursts.none(zones)
    origin_s = int(rates.slot_start_s[0])
    for first in range(0, minutes, step):
        last = min(minutes, first + step)
        slot = np.arange(first, last) // MINUTES_PER_SLOT
        demand_boost, carry_d = _bursts(rng, zones, last - first, DEMAND_BURSTS, carry.demand)
        supply_boost, carry_s = _bursts(rng, zones, last - first, SUPPLY_BURSTS, carry.supply)
        carry = _Bursts(carry_d, carry_s)
        trip_rate = rates.demand[:, slot] / MINUTES_PER_SLOT * (1 + demand_boost)
        driver_rate = rates.supply[:, slot] / MINUTES_PER_SLOT * (1 + supply_boost)
        start_s = origin_s + 60 * first
        yield _expand(rng, start_s, rng.poisson(trip_rate), rng.poisson(driver_rate), last - first)


@dataclass(frozen=True)
class _Bursts:
    """The last BURST_MINUTES[1] minutes of burst starts (strength, duration) per zone."""

    demand: tuple[np.ndarray, np.ndarray]
    supply: tuple[np.ndarray, np.ndarray]

    @staticmethod
    def none(zones: int) -> _Bursts:
        empty = (np.zeros((zones, BURST_MINUTES[1])), np.zeros((zones, BURST_MINUTES[1]), int))
        return _Bursts(empty, empty)


def _bursts(
    rng: np.random.Generator,
    zones: int,
    minutes: int,
    kind: tuple[float, float, float],
    carry: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Extra rate per (zone, minute) from bursts starting now or in the minutes before."""
    chance, low, high = kind
    starts = rng.random((zones, minutes)) < chance
    strength = np.where(starts, rng.uniform(low, high, (zones, minutes)), 0.0)
    duration = rng.integers(BURST_MINUTES[0], BURST_MINUTES[1] + 1, (zones, minutes))
    longest = BURST_MINUTES[1]
    strength = np.concatenate([carry[0], strength], axis=1)
    duration = np.concatenate([carry[1], duration], axis=1)
    boost = np.zeros((zones, minutes))
    for age in range(longest):  # a burst started `age` minutes ago, still running
        begun = slice(longest - age, longest - age + minutes)
        boost += strength[:, begun] * (duration[:, begun] > age)
    return boost, (strength[:, -longest:], duration[:, -longest:])


def _expand(
    rng: np.random.Generator, start_s: int, trips: np.ndarray, drivers: np.ndarray, minutes: int
) -> EventChunk:
    """Per-minute counts -> events at uniform times within their minute, sorted."""
    zones = trips.shape[0]
    zone_of = np.repeat(np.arange(zones, dtype=np.int64), minutes)
    minute_of = np.tile(np.arange(minutes, dtype=np.int64), zones)
    counts = np.concatenate([trips.reshape(-1), drivers.reshape(-1)])
    zone_id = np.repeat(np.concatenate([zone_of, zone_of]), counts)
    minute = np.repeat(np.concatenate([minute_of, minute_of]), counts)
    is_trip = np.repeat(np.arange(2 * zones * minutes) < zones * minutes, counts).astype(np.int64)
    ts_us = start_s * 1_000_000 + minute * MINUTE_US + rng.integers(0, MINUTE_US, len(minute))
    order = np.lexsort((1 - is_trip, zone_id, ts_us))
    return EventChunk(start_s, start_s + 60 * minutes, zone_id[order], ts_us[order], is_trip[order])


def recent_activity(
    rates: ZoneRates, seed: int, ts_s: np.ndarray, zone: np.ndarray, windows_s: tuple[int, ...]
) -> RecentActivity:
    """Events of each label's zone in its last `windows_s` seconds (t - W < event <= t).

    Labels (`ts_s` ascending) are answered chunk by chunk from that chunk's events and the
    previous chunk's (a chunk is at least LOOKBACK_S long), so memory stays one chunk's worth.
    """
    if max(windows_s, default=0) > LOOKBACK_S:
        raise ValueError(f"a label looks back at most {LOOKBACK_S} s")
    trips = {w: np.zeros(len(ts_s), np.int64) for w in windows_s}
    drivers = {w: np.zeros(len(ts_s), np.int64) for w in windows_s}
    previous: EventChunk | None = None
    for chunk in event_chunks(rates, seed):
        inside = np.flatnonzero((ts_s >= chunk.start_s) & (ts_s < chunk.end_s))
        if len(inside):
            index = _ZoneTimeIndex.of(chunk, previous)
            for w in windows_s:
                trips[w][inside], drivers[w][inside] = index.counts(
                    zone[inside], ts_s[inside] * 1_000_000, w
                )
        previous = chunk
    return RecentActivity(trips, drivers)


@dataclass(frozen=True)
class _ZoneTimeIndex:
    """Events sorted by (zone, time) with running counts: a window is two binary searches."""

    origin_us: int
    span_us: int
    keys: np.ndarray
    trips_before: np.ndarray  # trips among the first i events, i = 0..n
    drivers_before: np.ndarray

    @staticmethod
    def of(chunk: EventChunk, previous: EventChunk | None) -> _ZoneTimeIndex:
        parts = [c for c in (previous, chunk) if c is not None]
        origin_us = parts[0].start_s * 1_000_000
        span_us = (chunk.end_s - parts[0].start_s) * 1_000_000 + 1
        zone_id = np.concatenate([c.zone_id for c in parts])
        rel = np.concatenate([c.ts_us for c in parts]) - origin_us
        is_trip = np.concatenate([c.trip_requested for c in parts])
        keys = zone_id * span_us + rel
        order = np.argsort(keys, kind="stable")
        trip_sorted = is_trip[order]
        zero = np.zeros(1, np.int64)
        return _ZoneTimeIndex(
            origin_us,
            span_us,
            keys[order],
            np.concatenate([zero, np.cumsum(trip_sorted)]),
            np.concatenate([zero, np.cumsum(1 - trip_sorted)]),
        )

    def counts(
        self, zone: np.ndarray, at_us: np.ndarray, window_s: int
    ) -> tuple[np.ndarray, np.ndarray]:
        base = zone.astype(np.int64) * self.span_us - self.origin_us
        hi = np.searchsorted(self.keys, base + at_us, side="right")
        lo = np.searchsorted(self.keys, base + at_us - window_s * 1_000_000, side="right")
        return (
            self.trips_before[hi] - self.trips_before[lo],
            self.drivers_before[hi] - self.drivers_before[lo],
        )
