"""Windowed views online: pushed events applied to their tiles, and quiet windows aged.

A windowed view (a stream feature view with aggregations) takes events, not rows: each pushed
row adds its event columns to its entity's tiles, and the windows' values are rewritten in the
entity's Feast hash (serving/store/window_tiles.py does both in one atomic script). Values
change when time moves on too: `tick` recomputes every entity whose windows still hold events,
as of the clock, once per tile (the values only change when a tile boundary passes).

Tiles and values live on one Redis server: the script touches the stream, the tiles and the
Feast hash together, which a Redis Cluster cannot do across slots.
"""

from __future__ import annotations

import logging
import math
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from serving.errors import InvalidRequestError, UnsupportedError
from serving.repo.plan import FeatureViewPlan, ServingPlan
from serving.store.connection import RedisConnection
from serving.store.online_store import OnlineStore
from serving.store.window_tiles import SCRIPT, Events, WindowedView, script_args

log = logging.getLogger(__name__)
TICK_ENTITIES = 500  # entities recomputed per script call of a tick (Redis runs one at a time)
CALL_ROWS = 500  # events per script call of a push: ~30 ms of Redis at most (benchmarks/)
_US = 1_000_000


@dataclass(frozen=True)
class StreamAck:
    """The stream entries a push carries: each row's entry id, acknowledged with its effect."""

    stream: bytes
    group: bytes
    consumer: bytes
    entry_ids: Sequence[bytes]  # one per pushed row


@dataclass(frozen=True)
class WindowCounts:
    applied: int  # events added to tiles
    repeated: int  # stream entries already applied (acknowledged before): not added again


class WindowWriter:
    """Applies events to a plan's windowed views on one Redis server; thread-safe."""

    def __init__(
        self, plan: ServingPlan, store: OnlineStore, clock: Callable[[], float] = time.time
    ) -> None:
        if not isinstance(store.connection, RedisConnection):
            raise UnsupportedError(
                "windowed feature views are kept on one Redis server, not a Redis Cluster: "
                "their tiles, values and stream are updated in one atomic script"
            )
        self.plan = plan
        self.clock = clock
        self.key_ttl_s = int(store.settings.key_ttl_s or 0)
        self.client: Any = store.connection.client()
        self._script = self.client.register_script(SCRIPT)
        self._views: dict[str, WindowedView] = {}

    def windowed(self, view: FeatureViewPlan) -> WindowedView:
        known = self._views.get(view.name)
        if known is None:
            dtypes = {f.name: f.dtype for f in view.features}
            known = WindowedView(
                name=view.name,
                project=self.plan.project,
                hop_s=view.hop_s,
                key_ttl_s=self.key_ttl_s,
                columns=tuple(c.name for c in view.event_columns),
                aggregations=tuple(
                    (a.name, a.function, a.window_s, dtypes[a.name]) for a in view.aggregations
                ),
                columns_of=tuple(a.column for a in view.aggregations),
            )
            self._views[view.name] = known
        return known

    def events(
        self,
        view: FeatureViewPlan,
        feast_keys: Sequence[bytes],
        event_us: Sequence[int],
        columns: Mapping[str, Sequence[Any]],
        entry_ids: Sequence[bytes] | None = None,
    ) -> Events:
        """A view's part of a call: one event per row; `columns` by event column name."""
        index: dict[bytes, int] = {}
        entity = [index.setdefault(key, len(index)) for key in feast_keys]
        values = [_numbers(c.name, c.dtype, columns[c.name]) for c in view.event_columns]
        return Events(self.windowed(view), list(index), entity, event_us, values, entry_ids)

    def apply(self, sections: Sequence[Events], ack: StreamAck | None = None) -> WindowCounts:
        """Add the events to their tiles and rewrite the touched windows, in one atomic call;
        with `ack`, only entries still pending are applied, and acknowledged with it."""
        sections = [s for s in sections if s.entity]
        rows = max((len(s.entity) for s in sections), default=0)
        mode = "stream" if ack is not None else "push"
        group, consumer = (ack.group, ack.consumer) if ack is not None else (b"", b"")
        applied = repeated = 0
        for start in range(0, rows, CALL_ROWS):  # Redis runs nothing else during a call
            part = [_rows(s, start, start + CALL_ROWS) for s in sections]
            keys, args = script_args(mode, part, self._now_us(), group, consumer)
            stream = ack.stream if ack is not None else keys[0]
            reply: list[int] = self._script(keys=[stream, *keys], args=args)
            applied, repeated = applied + int(reply[0]), repeated + int(reply[1])
        return WindowCounts(applied, repeated)

    def tick(self, views: Sequence[FeatureViewPlan]) -> int:
        """Recompute, as of the clock, every entity whose windows still hold events; returns
        how many were recomputed. An entity whose windows emptied leaves the active set.
        One tick per view and tile, whoever asks: servers and ingesters all age windows, and
        the first to claim a tile's tick (SET NX) does it."""
        done = 0
        now_us = self._now_us()
        for view in views:
            windowed = self.windowed(view)
            tile = now_us // (view.hop_s * _US)
            claim = windowed.active_key + b":tick:%d" % tile
            if not self.client.set(claim, b"1", nx=True, px=view.hop_s * 2_000):
                continue
            members: list[bytes] = self.client.zrange(windowed.active_key, 0, -1)
            for start in range(0, len(members), TICK_ENTITIES):
                chunk = members[start : start + TICK_ENTITIES]
                section = Events(windowed, chunk, [], [], [[] for _ in windowed.columns])
                keys, args = script_args("tick", [section], self._now_us())
                self._script(keys=[keys[0], *keys], args=args)
                done += len(chunk)
        return done

    def age(self, views: Sequence[FeatureViewPlan], stop: threading.Event) -> None:
        """Tick at every tile boundary until `stop` is set; a failing Redis is retried at the
        next boundary (one warning per tile at most)."""
        if not views:
            return
        hop_s = min(v.hop_s for v in views)
        while not stop.is_set():  # bounded by stop
            try:
                self.tick(views)
            except redis.RedisError as exc:  # unavailable, or refusing (OOM, READONLY, ...)
                log.warning("ageing windows: Redis failed (%s); trying at the next tile", exc)
            now = self.clock()
            stop.wait(hop_s - now % hop_s + 0.01)  # just past the next boundary

    def _now_us(self) -> int:
        return int(self.clock() * _US)


def _rows(events: Events, start: int, stop: int) -> Events:
    """Rows start..stop of a view's events, their entities numbered afresh."""
    if start == 0 and stop >= len(events.entity):
        return events
    index: dict[int, int] = {}
    entity = [index.setdefault(e, len(index)) for e in events.entity[start:stop]]
    ids = events.entry_ids
    return Events(
        events.view,
        [events.feast_keys[e] for e in index],
        entity,
        events.event_us[start:stop],
        [column[start:stop] for column in events.values],
        ids[start:stop] if ids is not None else None,
    )


def _numbers(name: str, dtype: str, column: Sequence[Any]) -> list[float | int | None]:
    """An event column's values as numbers of its type (as its Parquet batch source holds
    them: Float32 rounded to float32, Int32 within range); null and NaN are null."""
    out: list[float | int | None] = list(column)
    for row, value in enumerate(out):
        kind = type(value)
        if kind is int or (kind is float and math.isfinite(value)):  # type: ignore[arg-type]
            continue  # the common case first: a pass over plain numbers
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out[row] = None
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequestError(
                f"columns.{name} row {row}: an aggregated column takes numbers, "
                f"got {type(value).__name__}"
            )
        elif isinstance(value, float):
            raise InvalidRequestError(f"columns.{name} row {row}: {value} is not a finite number")
    if dtype == "Float32":
        return [None if v is None else _FLOAT32.unpack(_FLOAT32.pack(v))[0] for v in out]
    if dtype == "Int32" or dtype == "Int64":
        low, high = _INT_RANGES[dtype]
        for row, value in enumerate(out):
            if value is not None and not (isinstance(value, int) and low <= value <= high):
                raise InvalidRequestError(
                    f"columns.{name} row {row}: {value} is not an {dtype} (the column's type)"
                )
    return out


_FLOAT32 = struct.Struct("<f")
_INT_RANGES = {"Int32": (-(2**31), 2**31 - 1), "Int64": (-(2**63), 2**63 - 1)}
