"""Point-in-time joins over a feature view's Parquet source, with Feast's semantics.

Concern: for entity rows (join key values, time t), find in one feature view the source row
Feast's historical retrieval (file offline store, `filter_by_created_timestamp=True`, as
serving/repo/historical.py calls it) would join, without Feast.

For an entity row at t the view contributes, among its source rows with the same join keys,
    event_ts <= t,  event_ts >= t - ttl (ttl > 0; both ends inclusive),
    created <= t   (when the source has a created timestamp column),
the one with the greatest (event_ts, created); when there is none the features are missing.
Like Feast: a null created timestamp is never visible (Feast's cutoff compares it false), a
source row with a null event timestamp or a null join key is never joined, and an entity row
whose rows are all outside the ttl gets missing features (Feast drops that row; see
`historical.py`). Without a created column, ties on event time go to the later file row.
Exact ties on event time are the one place Feast's file store is not reliable: it dedups
after sorting by created and then by event time, and the second sort is not stable, so on a
probe with two versions of one event time it returned the older version for one entity row
and the newer for another. Here the latest created always wins: Feast's documented rule and
what `carrara materialize` (parquet_source.py) puts online.

A windowed view (a stream feature view with aggregations) has no such rows: its source holds
raw events, and its values as of t are windows over them (`load_windows`, `windows_at`;
serving/repo/windows.py defines them). The source readers of both are windows.py's
(`read_source`): the repo layer's training retrieval reads events too.

Invariants: the table holds every source row of the columns asked for (feature tables fit
in memory; entity rows are what streams); rows are sorted by (key id, event time, created)
and a lookup is vectorised: key ids by hashing (`pyarrow.compute.index_in`), one
`searchsorted` on (key id, rank of event time), then a backward step over rows created after
t, repeated only for the rows that still need it. Times are int64 nanoseconds since the
epoch, UTC (naive timestamps are UTC, as in Feast).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from serving.batch.parquet_source import SourceColumns
from serving.errors import DataError
from serving.repo.plan import FeatureViewPlan
from serving.repo.windows import (
    WindowIndex,
    combine_keys,
    key_column,
    read_events,
    read_source,
    window_index,
    window_values,
)

NS_PER_S = 1_000_000_000
NEVER = np.iinfo(np.int64).max  # the created time of a row that is never visible

Ids = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class FeatureTable:
    """One view's source rows, sorted and indexed for as-of lookups."""

    view: str
    join_keys: tuple[str, ...]  # the view's join keys, in its declared order
    ttl_ns: int  # 0: no ttl
    key_values: tuple[pa.Array, ...]  # distinct values of each join key
    distinct_keys: Ids  # sorted combined codes of the key tuples; key id = position
    key_ids: Ids  # per row
    event_ns: Ids  # per row
    created_ns: Ids  # per row; NEVER when null
    times: Ids  # distinct event times, sorted
    composite: Ids  # per row: key id * (len(times) + 1) + rank of its event time
    columns: pa.Table  # the features asked for, one row per source row, in sorted order

    @property
    def rows(self) -> int:
        return len(self.event_ns)

    def key_ids_of(self, keys: Sequence[Any]) -> Ids:
        """The key id of each entity row (columns in `join_keys` order); -1 when unknown."""
        combined = combine_keys(keys, self.key_values)
        at = np.searchsorted(self.distinct_keys, combined)
        at = np.minimum(at, max(len(self.distinct_keys) - 1, 0))
        found = (combined >= 0) & (self.distinct_keys[at] == combined) if self.rows else False
        return np.where(found, at, -1).astype(np.int64)

    def match(self, keys: Sequence[Any], at_ns: Ids) -> npt.NDArray[np.intp]:
        """Per entity row, the row index joined as of `at_ns`, or -1 (features missing)."""
        key_ids = self.key_ids_of(keys)
        result = np.full(len(at_ns), -1, dtype=np.intp)
        query = np.flatnonzero(key_ids >= 0)
        if not len(query):
            return result
        kid, t = key_ids[query], at_ns[query]
        low = t - self.ttl_ns if self.ttl_ns else np.full(len(t), np.iinfo(np.int64).min)
        rank = np.searchsorted(self.times, t, side="right")
        row = np.searchsorted(self.composite, kid * (len(self.times) + 1) + rank, side="right")
        row = row.astype(np.intp) - 1
        ok = self._same_key_in_window(row, kid, low)
        late = ok & (self.created_ns[np.maximum(row, 0)] > t)
        while late.any():  # step back over rows created after t, only where needed
            todo = np.flatnonzero(late)
            row[todo] -= 1
            still = self._same_key_in_window(row[todo], kid[todo], low[todo])
            ok[todo] = still
            late[todo] = still & (self.created_ns[np.maximum(row[todo], 0)] > t[todo])
        result[query[ok]] = row[ok]
        return result

    def _same_key_in_window(
        self, row: npt.NDArray[np.intp], kid: Ids, low: Ids
    ) -> npt.NDArray[np.bool_]:
        safe = np.maximum(row, 0)
        ok: npt.NDArray[np.bool_] = (
            (row >= 0) & (self.key_ids[safe] == kid) & (self.event_ns[safe] >= low)
        )
        return ok


def load_feature_table(view: FeatureViewPlan, repo: Path, features: Sequence[str]) -> FeatureTable:
    """The view's source rows with `features` (view names), indexed for lookups."""
    if view.windowed:
        raise DataError(
            f"feature view {view.name!r} is windowed: its source holds events, not features "
            "(join it with load_windows)"
        )
    source = SourceColumns.of(view)
    for name in features:
        view.feature(name)  # PlanError when the view has no such feature
    table = _read_source(view, repo, source, features)
    table = table.filter(_usable(table, view))
    key_columns = [key_column(table, key.name, key.dtype, view.name) for key in view.join_keys]
    key_values = tuple(pc.unique(column) for column in key_columns)
    combined = combine_keys(key_columns, key_values)
    distinct_keys = np.unique(combined)
    key_ids = np.searchsorted(distinct_keys, combined).astype(np.int64)
    event_ns = timestamp_ns(table["__event"])
    created_ns = _created_ns(table)
    order = np.lexsort((created_ns, event_ns, key_ids))  # stable: file order breaks ties
    key_ids, event_ns, created_ns = key_ids[order], event_ns[order], created_ns[order]
    times = np.unique(event_ns)
    rank = np.searchsorted(times, event_ns, side="right")
    if len(distinct_keys) * (len(times) + 1) >= np.iinfo(np.int64).max // 2:
        raise DataError(f"feature view {view.name!r}: too many keys and times to index")
    return FeatureTable(
        view=view.name,
        join_keys=tuple(key.name for key in view.join_keys),
        ttl_ns=(view.ttl_s or 0) * NS_PER_S,  # ttl None and 0: no ttl
        key_values=key_values,
        distinct_keys=distinct_keys.astype(np.int64),
        key_ids=key_ids,
        event_ns=event_ns,
        created_ns=created_ns,
        times=times,
        composite=key_ids * (len(times) + 1) + rank,
        columns=table.select(list(features)).take(pa.array(order)),
    )


def load_windows(view: FeatureViewPlan, repo: Path) -> WindowIndex:
    """A windowed view's events, indexed for windows as of entity rows (windows.py)."""
    return window_index(view, read_events(view, repo))


def windows_at(
    index: WindowIndex, keys: Sequence[Any], at_ns: Ids, features: Sequence[str]
) -> pa.Table:
    """`features` of a windowed view per entity row as of `at_ns` (int64 ns, UTC): the
    window as of the row's microsecond (an event at most at_ns is at most its floor)."""
    return window_values(index, keys, np.asarray(at_ns, dtype=np.int64) // 1_000, features)


def _read_source(
    view: FeatureViewPlan, repo: Path, source: SourceColumns, features: Sequence[str]
) -> pa.Table:
    """Join keys, times and `features` of every source file, named as the view names them."""
    wanted = {**source.join_keys, **{f: source.features[f] for f in features}}
    wanted["__event"] = source.event_ts
    if source.created_ts:
        wanted["__created"] = source.created_ts
    return read_source(view, repo, wanted, timestamps=("__event", "__created"))


def _usable(table: pa.Table, view: FeatureViewPlan) -> pa.Array:
    """Rows that can ever be joined: an event time and every join key present."""
    mask = pc.is_valid(table["__event"])
    for key in view.join_keys:
        mask = pc.and_(mask, pc.is_valid(table[key.name]))
    return mask


def timestamp_ns(column: Any, null: int = NEVER) -> Ids:
    """A timestamp column as int64 ns since the epoch (UTC), `null` where null."""
    try:
        as_ns = pc.cast(column, pa.timestamp("ns", tz=column.type.tz))
    except pa.ArrowException as exc:
        raise DataError(f"timestamps out of the representable range: {exc}") from exc
    values: Ids = pc.fill_null(pc.cast(as_ns, pa.int64()), null).to_numpy(zero_copy_only=False)
    return values


def _created_ns(table: pa.Table) -> Ids:
    if "__created" not in table.column_names:
        return np.full(table.num_rows, np.iinfo(np.int64).min, dtype=np.int64)
    return timestamp_ns(table["__created"])
