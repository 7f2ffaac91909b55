"""What a windowed aggregation holds: the one definition online tiles and offline joins share.

A stream feature view's `Aggregation`s (plan.WindowAggregation) are kept over tiles of
`hop_s` seconds of event time: an event at `t` (UTC microseconds) falls in tile
`floor(t / hop_us)`. A view's value *as of* `A` for a window of `W` seconds aggregates the
events of its entity in the `W / hop_s` tiles ending with A's own tile, none later than A:

    tile_of(A) - W/hop_s + 1  <=  tile_of(event)  <=  tile_of(A),   event <= A

so a window covers between W - hop_s and W seconds of event time (Feast's sawtooth tiling).
Values over no event: sum 0, count 0, mean/min/max null. A null input is skipped (count counts
non-null values). Every value is null (missing) where the online store holds none: an entity
with no event at or before A, or (ttl > 0) whose windows emptied more than ttl before A (online,
events and ticks write the values until the windows empty, after which they age out).
Online (serving/store/window_tiles.py), A is the newest of: the previous as-of, the newest
event applied and the writer's clock; the Feast hash's `_ts:<view>` says A, so the value read
online is checkable offline as of its own timestamp.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from serving.errors import DataError
from serving.repo.plan import DUMMY_ENTITY_ID, FeatureViewPlan

_US = 1_000_000
_EVER = 2**40  # seconds: a window reaching back before any event time


def tile_of(event_us: int, hop_s: int) -> int:
    """The tile an event time falls in (floor division: times before 1970 too)."""
    return event_us // (hop_s * _US)


def window_tiles(as_of_us: int, hop_s: int, window_s: int) -> tuple[int, int]:
    """The first and last tile (inclusive) of a `window_s` window as of `as_of_us`."""
    last = tile_of(as_of_us, hop_s)
    return last - window_s // hop_s + 1, last


def window_start_us(as_of_us: int, hop_s: int, window_s: int) -> int:
    """The earliest event time a window as of `as_of_us` holds (its first tile's start)."""
    return window_tiles(as_of_us, hop_s, window_s)[0] * hop_s * _US


# --- offline: windows as of entity rows, over a view's raw events ---------------------------
#
# The batch source of a windowed view holds raw events (join keys, event columns, event time).
# Offline values as of entity rows: the events are sorted by (entity, time), so a window as of
# A is one contiguous run of them, [first event of its first tile, last event <= A]; counts and
# integer sums come from int64 prefix sums (exact: wrapping int64 arithmetic gives the exact
# difference whenever the window's own sum fits), float sums, min and max from a pairwise tree
# over the run (a float sum's error is relative to the window's values, never to the history
# before it). Memory: a few arrays per event column, O(events).

EVENT = "__event"  # the events' (and `read_source`'s) event-time column
_KEY_TYPES = {"Int64": pa.int64(), "Int32": pa.int64(), "String": pa.string()}
_UNITS_PER_S = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_INTEGER_OUTPUTS = {"Int64": pa.int64(), "Int32": pa.int32()}
_FLOAT_OUTPUTS = {"Float64": pa.float64(), "Float32": pa.float32()}

Ids = npt.NDArray[np.int64]


def source_files(view: FeatureViewPlan, repo: Path) -> list[str]:
    """The Parquet files of the view's source (a file, or every Parquet file under a folder,
    hive partition folders included); relative paths are relative to the repo."""
    if view.source is None:
        raise DataError(f"feature view {view.name!r} has no Parquet (file) batch source")
    raw = view.source.path
    path = raw if "://" in raw or Path(raw).is_absolute() else str(repo / raw)
    try:
        if "://" not in path and Path(path).is_file():
            return [path]
        import pyarrow.dataset as ds  # a folder or a URI; this import pulls pandas (0.3 s)

        return sorted(ds.dataset(path, format="parquet").files)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"feature view {view.name!r}: cannot read source {path}: {exc}") from exc


def read_source(
    view: FeatureViewPlan, repo: Path, wanted: Mapping[str, str], timestamps: Sequence[str] = ()
) -> pa.Table:
    """Columns of every source file as `wanted` names them (name -> source column); names in
    `timestamps` must be timestamp columns. An entityless view's dummy key is "" on every row,
    as Feast's offline store adds it. The batch readers of point-in-time joins and windows."""
    constant = {DUMMY_ENTITY_ID} if view.entityless else set()
    read = {name: raw for name, raw in wanted.items() if name not in constant}
    parts = []
    for path in source_files(view, repo):
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"cannot read Parquet file {path}: {exc}") from exc
        for name, raw in read.items():
            if raw not in schema.names:
                raise DataError(f"{path}: no column {raw!r} (feature view {view.name!r}, {name})")
        for name in timestamps:
            if name in read and not pa.types.is_timestamp(schema.field(read[name]).type):
                raise DataError(f"{path}: column {read[name]!r} is not a timestamp")
        try:
            part = pq.read_table(path, columns=list(dict.fromkeys(read.values())))
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"cannot read Parquet file {path}: {exc}") from exc
        columns = {name: part[raw] for name, raw in read.items()}
        columns.update(
            {name: pa.array([""] * part.num_rows) for name in wanted if name in constant}
        )
        parts.append(pa.table({name: columns[name] for name in wanted}))
    if not parts:
        raise DataError(f"feature view {view.name!r}: its source has no Parquet files")
    try:
        return pa.concat_tables(parts, promote_options="permissive")
    except pa.ArrowException as exc:
        raise DataError(f"feature view {view.name!r}: source files disagree: {exc}") from exc


def read_events(view: FeatureViewPlan, repo: Path) -> pa.Table:
    """A windowed view's raw events: its join keys and event columns (as the view names them,
    the source's field_mapping applied) and EVENT, the event time."""
    if view.source is None:
        raise DataError(f"feature view {view.name!r} has no Parquet (file) batch source")
    source_of = {mapped: raw for raw, mapped in view.source.field_mapping.items()}
    names = [c.name for c in (*view.join_keys, *view.event_columns)]
    wanted = {name: source_of.get(name, name) for name in names}
    wanted[EVENT] = view.source.timestamp_field
    return read_source(view, repo, wanted, timestamps=(EVENT,))


def key_column(table: pa.Table, name: str, dtype: str, view: str) -> pa.Array:
    """A join key column as the type its values are matched in (int64 or string)."""
    target = _KEY_TYPES.get(dtype)
    if target is None:
        raise DataError(
            f"feature view {view!r}: join key {name!r} of type {dtype} is not supported"
        )
    try:
        return pc.cast(table[name], target).combine_chunks()
    except pa.ArrowException as exc:
        raise DataError(f"feature view {view!r}: join key {name!r} is not {dtype}: {exc}") from exc


def combine_keys(keys: Sequence[Any], key_values: Sequence[pa.Array]) -> Ids:
    """One int64 code per key tuple (mixed radix of per-column codes); -1 if any is unknown."""
    radix = 1
    for values in key_values:
        radix *= max(len(values), 1)
    if radix >= 2**62:
        raise DataError("too many distinct join key tuples to index")
    combined = np.zeros(len(keys[0]) if keys else 0, dtype=np.int64)
    unknown = np.zeros(len(combined), dtype=np.bool_)
    for column, values in zip(keys, key_values, strict=True):
        array = column if isinstance(column, pa.Array | pa.ChunkedArray) else pa.array(column)
        codes = pc.index_in(pc.cast(array, values.type), value_set=values)
        unknown |= codes.is_null().to_numpy(zero_copy_only=False)
        filled = pc.fill_null(codes, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        combined = combined * max(len(values), 1) + filled
    combined[unknown] = -1
    return combined


def event_us(column: Any) -> Ids:
    """A timestamp column without nulls as int64 UTC microseconds (floor of finer units)."""
    per_s = _UNITS_PER_S[column.type.unit]
    raw: Ids = pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)
    if per_s >= _US:
        return raw // (per_s // _US)
    return raw * (_US // per_s)


class _Tree:
    """Pairwise reductions (sum, min or max) of every aligned power-of-two block of values:
    any range reduces from O(log n) blocks, vectorised over many ranges."""

    def __init__(self, values: np.ndarray, op: np.ufunc, identity: float | int) -> None:
        size = 1 << max(0, (len(values) - 1).bit_length())
        base = np.full(size, identity, dtype=values.dtype)
        base[: len(values)] = values
        self.levels = [base]
        while len(self.levels[-1]) > 1:
            level = self.levels[-1]
            self.levels.append(op(level[0::2], level[1::2]))
        self.op, self.identity = op, identity

    def reduce(self, lo: Ids, hi: Ids) -> np.ndarray:
        """op over values[lo:hi] per range; the identity for an empty one."""
        result = np.full(len(lo), self.identity, dtype=self.levels[0].dtype)
        left, right = lo.copy(), hi.copy()
        for level in self.levels:
            take = ((left & 1) == 1) & (left < right)
            result[take] = self.op(result[take], level[left[take]])
            left[take] += 1
            take = ((right & 1) == 1) & (left < right)
            right[take] -= 1
            result[take] = self.op(result[take], level[right[take]])
            left >>= 1
            right >>= 1
        return result


@dataclass(frozen=True, eq=False)
class _EventColumn:
    """One event column over the sorted events: what its aggregations read."""

    integer: bool
    counts: Ids  # prefix counts of non-null values (length events + 1)
    sums: Ids | None  # integer columns: prefix sums
    float_sums: _Tree | None  # float columns: pairwise sums
    lows: _Tree
    highs: _Tree

    @classmethod
    def of(cls, column: Any, name: str, view: str) -> _EventColumn:
        arrow_type = column.type
        integer = pa.types.is_integer(arrow_type)
        try:
            values = pc.cast(column, pa.int64() if integer else pa.float64())
        except pa.ArrowException as exc:
            raise DataError(
                f"feature view {view!r}: event column {name!r} ({arrow_type}) is not a number"
            ) from exc
        valid = pc.is_valid(values).to_numpy(zero_copy_only=False)
        top: float | int
        bottom: float | int
        if integer:
            filled = pc.fill_null(values, 0).to_numpy(zero_copy_only=False).astype(np.int64)
            top, bottom = np.iinfo(np.int64).max, np.iinfo(np.int64).min
        else:
            filled = pc.fill_null(values, 0.0).to_numpy(zero_copy_only=False).astype(np.float64)
            valid = valid & ~np.isnan(filled)  # NaN is null, as a push takes it
            filled[~valid] = 0.0
            top, bottom = math.inf, -math.inf
        counts = np.concatenate([[0], np.cumsum(valid, dtype=np.int64)])
        return cls(
            integer=integer,
            counts=counts,
            sums=np.concatenate([[0], np.cumsum(filled, dtype=np.int64)]) if integer else None,
            float_sums=None if integer else _Tree(filled, np.add, 0.0),
            lows=_Tree(np.where(valid, filled, top), np.minimum, top),
            highs=_Tree(np.where(valid, filled, bottom), np.maximum, bottom),
        )

    def aggregate(self, function: str, lo: Ids, hi: Ids) -> tuple[np.ndarray, np.ndarray]:
        """(values, valid) of `function` over the events [lo, hi) of each row."""
        count = self.counts[hi] - self.counts[lo]
        if function == "count":
            return count, np.ones(len(lo), np.bool_)
        if function in ("sum", "mean"):
            if self.sums is not None:
                total: np.ndarray = self.sums[hi] - self.sums[lo]
            else:
                assert self.float_sums is not None
                total = self.float_sums.reduce(lo, hi)
            if function == "sum":
                return total, np.ones(len(lo), np.bool_)
            with np.errstate(invalid="ignore", divide="ignore"):
                return total / np.maximum(count, 1), count > 0
        tree = self.lows if function == "min" else self.highs
        return tree.reduce(lo, hi), count > 0


@dataclass(frozen=True, eq=False)
class WindowIndex:
    """A windowed view's events, sorted by (entity, time) and ready for as-of windows."""

    view: FeatureViewPlan
    key_values: tuple[pa.Array, ...]  # distinct values of each join key
    distinct_keys: Ids  # sorted key tuple codes; entity id = position
    times_us: Ids  # distinct event times, sorted
    composite: Ids  # per sorted event: entity id * (len(times_us) + 1) + rank of its time
    columns: dict[str, _EventColumn]

    def ranges(self, keys: Sequence[Any], as_of_us: Ids, window_s: int) -> tuple[Ids, Ids]:
        """Per entity row, the sorted events [lo, hi) its `window_s` window holds as of A."""
        kid = np.full(len(as_of_us), -1, dtype=np.int64)
        if len(self.distinct_keys):
            combined = combine_keys(keys, self.key_values)
            at = np.minimum(
                np.searchsorted(self.distinct_keys, combined), len(self.distinct_keys) - 1
            )
            kid = np.where((combined >= 0) & (self.distinct_keys[at] == combined), at, -1)
        hop_us = self.view.hop_s * _US
        start_us = (as_of_us // hop_us - window_s // self.view.hop_s + 1) * hop_us
        stride = len(self.times_us) + 1
        first = np.searchsorted(self.times_us, start_us, side="left") + 1
        last = np.searchsorted(self.times_us, as_of_us, side="right")
        lo = np.searchsorted(self.composite, kid * stride + first, side="left").astype(np.int64)
        hi = np.searchsorted(self.composite, kid * stride + last, side="right").astype(np.int64)
        known = kid >= 0
        return np.where(known, lo, 0), np.where(known, np.maximum(hi, lo), 0)

    def present(self, keys: Sequence[Any], as_of_us: Ids) -> npt.NDArray[np.bool_]:
        """Per entity row, whether the online store holds the view's values as of A: the
        entity has an event at or before A, and (ttl > 0) its windows emptied no more than
        ttl before A. Online, events and ticks write the values until the windows empty
        (at the end of the newest event's tile + the longest window); then they age out."""
        longest = max(a.window_s for a in self.view.aggregations)
        lo, hi = self.ranges(keys, as_of_us, window_s=_EVER)
        seen = hi > lo
        if not self.view.ttl_s or not seen.any():
            return seen
        rank = self.composite[np.maximum(hi - 1, 0)] % (len(self.times_us) + 1)
        newest_us = self.times_us[np.maximum(rank - 1, 0)]
        hop_us = self.view.hop_s * _US
        emptied_us = (newest_us // hop_us + longest // self.view.hop_s) * hop_us
        return seen & (as_of_us - self.view.ttl_s * _US <= emptied_us)


def window_index(view: FeatureViewPlan, events: pa.Table) -> WindowIndex:
    """Index a windowed view's `events` (join keys, event columns, EVENT; see `read_events`).
    Events with a null join key or a null event time are left out: they never count."""
    if not view.windowed:
        raise DataError(f"feature view {view.name!r} has no windowed aggregations")
    mask = pc.is_valid(events[EVENT])
    for key in view.join_keys:
        mask = pc.and_(mask, pc.is_valid(events[key.name]))
    events = events.filter(mask)
    key_columns = [key_column(events, k.name, k.dtype, view.name) for k in view.join_keys]
    key_values = tuple(pc.unique(column) for column in key_columns)
    combined = combine_keys(key_columns, key_values)
    distinct_keys = np.unique(combined)
    key_ids = np.searchsorted(distinct_keys, combined).astype(np.int64)
    times = event_us(events[EVENT])
    order = np.lexsort((times, key_ids))
    key_ids, times = key_ids[order], times[order]
    distinct_times = np.unique(times)
    if len(distinct_keys) * (len(distinct_times) + 1) >= 2**62:
        raise DataError(f"feature view {view.name!r}: too many entities and times to index")
    rank = np.searchsorted(distinct_times, times, side="left") + 1
    sorted_events = events.take(pa.array(order))
    return WindowIndex(
        view=view,
        key_values=key_values,
        distinct_keys=distinct_keys.astype(np.int64),
        times_us=distinct_times,
        composite=key_ids * (len(distinct_times) + 1) + rank,
        columns={
            c.name: _EventColumn.of(sorted_events[c.name], c.name, view.name)
            for c in view.event_columns
        },
    )


def window_values(
    index: WindowIndex,
    keys: Sequence[Any],
    as_of_us: Ids,
    names: Sequence[str] | None = None,
) -> pa.Table:
    """Each aggregation's value (of `names`, default all) per entity row, as of `as_of_us`
    (int64 UTC microseconds; floor a finer time). `keys`: one column per join key, in the
    view's order. Columns are typed as the view declares its features; null where a mean,
    min or max saw no value, and everywhere the online store holds no value (`present`)."""
    view = index.view
    wanted = [a for a in view.aggregations if names is None or a.name in names]
    as_of_us = np.asarray(as_of_us, dtype=np.int64)
    present = index.present(keys, as_of_us)
    ranges: dict[int, tuple[Ids, Ids]] = {}
    out = {}
    for agg in wanted:
        if agg.window_s not in ranges:
            ranges[agg.window_s] = index.ranges(keys, as_of_us, agg.window_s)
        lo, hi = ranges[agg.window_s]
        values, valid = index.columns[agg.column].aggregate(agg.function, lo, hi)
        out[agg.name] = _typed(values, valid & present, view.feature(agg.name).dtype)
    return pa.table(out)


def windows_as_of(
    view: FeatureViewPlan, events: pa.Table, keys: Sequence[Any], as_of_us: Ids
) -> pa.Table:
    """`window_values` of every aggregation over freshly indexed `events`."""
    return window_values(window_index(view, events), keys, as_of_us)


def _typed(values: np.ndarray, valid: np.ndarray, dtype: str) -> pa.Array:
    """Values as the declared output type, as the online store writes them: an integer type
    truncates a float toward zero, Float32 rounds."""
    if dtype in _INTEGER_OUTPUTS:
        if values.dtype.kind == "f":
            values = np.trunc(np.where(valid, values, 0.0))
        array = pa.array(values.astype(np.int64), mask=~valid)
        return pc.cast(array, _INTEGER_OUTPUTS[dtype], safe=False)
    target = _FLOAT_OUTPUTS.get(dtype)
    if target is None:
        raise DataError(f"a window's output of type {dtype} is not a number")
    array = pa.array(values.astype(np.float64), mask=~valid)
    return pc.cast(array, target, safe=False)
