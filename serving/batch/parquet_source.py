"""Parquet batch sources: the latest row per entity key in a time window, in bounded memory.

Concern: read a feature view's Parquet source (a file, or a folder of files) the way Feast's
materialize selects rows: event timestamp in [start, end] (both ends included, as Feast's
file offline store does), then per entity key the row with the greatest event timestamp,
the created timestamp breaking ties (a null created timestamp loses).

Invariants:
- Two streamed passes, row group by row group: the first reads only join keys and timestamps
  (row groups wholly outside the window are skipped by their statistics) and keeps, per
  entity, where its latest row is; the second reads full rows from just the row groups that
  hold one. Memory is bounded by the number of entities, not rows: kept (key, time, position)
  rows are compacted to one per entity whenever they outnumber the entities kept so far (and
  a floor). The files must not change between the passes.
- Ties on both timestamps keep the row that comes first (Feast leaves such ties unordered).
- Columns are checked against the view's schema before any row is read: a missing column, a
  type that cannot carry the declared dtype, an unreadable file or a null join key is a
  DataError naming the file and column.
- The result's columns are named as the view names them (the source's field_mapping applied)
  plus `EVENT_TS`; naive timestamps are UTC. An entityless view gets Feast's dummy join key
  `__dummy_id`, "" on every row, as Feast's offline store adds it.
- A folder source is every Parquet file under it (hive-style partition folders included, as
  Feast's dask reader takes them), in path order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from serving.errors import DataError
from serving.repo.plan import DUMMY_ENTITY_ID, FeatureViewPlan
from serving.repo.windows import source_files as source_files  # shared: the events reader

EVENT_TS = "__event_timestamp"
CREATED_TS = "__created_timestamp"
_FILE, _ROW = "__file", "__row"  # where a row is: index of its file, row number in the file
BATCH_ROWS = 256 * 1024
COMPACT_FLOOR_ROWS = 4_000_000  # kept rows below this are not compacted yet
_UNITS_PER_S = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


@dataclass(frozen=True)
class SourceColumns:
    """The source column read for each name the view uses."""

    view: str
    join_keys: dict[str, str]  # view name -> source column
    features: dict[str, str]
    dtypes: dict[str, str]  # view name -> Feast dtype
    event_ts: str
    created_ts: str | None
    constants: frozenset[str] = frozenset()  # join keys not read but "" on every row

    @classmethod
    def of(cls, view: FeatureViewPlan) -> SourceColumns:
        if view.source is None:
            raise DataError(f"feature view {view.name!r} has no Parquet (file) batch source")
        source_of = {mapped: raw for raw, mapped in view.source.field_mapping.items()}
        return cls(
            view=view.name,
            join_keys={k.name: source_of.get(k.name, k.name) for k in view.join_keys},
            features={f.name: source_of.get(f.name, f.name) for f in view.features},
            dtypes={c.name: c.dtype for c in (*view.join_keys, *view.features)},
            event_ts=view.source.timestamp_field,
            created_ts=view.source.created_timestamp_column,
            constants=frozenset([DUMMY_ENTITY_ID]) if view.entityless else frozenset(),
        )

    def read_keys(self) -> dict[str, str]:
        """The join keys read from the source (the dummy key of entityless views is not)."""
        return {k: raw for k, raw in self.join_keys.items() if k not in self.constants}

    def with_constants(self, table: pa.Table) -> pa.Table:
        for name in sorted(self.constants):
            table = table.append_column(name, pa.array([""] * table.num_rows, pa.string()))
        return table

    def renames(self) -> dict[str, str]:
        """Source column -> result column."""
        keys = self.read_keys()
        out = {raw: name for name, raw in (*keys.items(), *self.features.items())}
        out[self.event_ts] = EVENT_TS
        if self.created_ts:
            out[self.created_ts] = CREATED_TS
        return out


def may_hold_nulls(view: FeatureViewPlan, files: list[str], feature: str) -> bool:
    """Whether a feature's source column may hold a null (Parquet statistics; no statistics:
    it may)."""
    raw = SourceColumns.of(view).features[feature]
    for path in files:
        parquet = _open(path)
        leaf = _leaf_index(parquet, raw)
        if leaf is None:
            return True
        for group in range(parquet.metadata.num_row_groups):
            stats = parquet.metadata.row_group(group).column(leaf).statistics
            if stats is None or not stats.has_null_count or stats.null_count:
                return True
    return False


def total_rows(files: list[str]) -> int:
    return sum(_open(f).metadata.num_rows for f in files)


def latest_per_entity(
    view: FeatureViewPlan,
    files: list[str],
    start: datetime,
    end: datetime,
    on_rows: Callable[[int], None] | None = None,
) -> Latest:
    """Where each entity's latest row in [start, end] is; `on_rows(n)` as rows are scanned.

    Two passes: the first reads only the join keys and timestamps of every row in the window
    and keeps the latest per entity (compacting as it goes); `Latest.chunks` then reads the
    full rows of just those, row group by row group, skipping groups that hold none.
    """
    columns = SourceColumns.of(view)
    keys = latest_keys(columns, files, start, end, on_rows)
    return Latest(columns, files, positions(keys))


NO_ROWS = pa.table({_FILE: pa.array([], pa.int32()), _ROW: pa.array([], pa.int64())})


def positions(keys: pa.Table) -> pa.Table:
    """`Latest.where` of a `latest_keys` table: the rows' positions, in file order."""
    return keys.select([_FILE, _ROW]).sort_by([(_FILE, "ascending"), (_ROW, "ascending")])


def latest_keys(
    columns: SourceColumns,
    files: list[str],
    start: datetime,
    end: datetime,
    on_rows: Callable[[int], None] | None = None,
    first_file: int = 0,
) -> pa.Table:
    """The first pass: per entity, its latest row's join keys, timestamps and position (file
    index, counted from `first_file`, and row), in no particular order.

    A table of such rows from several calls, concatenated in file order, reduces again with
    `reduce_latest` to the same rows as one call over all the files (the earlier file wins a
    tie, as in one call)."""
    start_us, end_us = _micros(start), _micros(end)
    kept: list[pa.Table] = []
    kept_rows = entities = 0
    for batch in _key_batches(columns, files, start_us, end_us, on_rows, first_file):
        kept.append(batch)
        kept_rows += batch.num_rows
        if kept_rows >= max(COMPACT_FLOOR_ROWS, 2 * entities):
            kept = [reduce_latest(concat_keys(kept), columns)]
            kept_rows = entities = kept[0].num_rows
    if not kept:
        return _empty_keys(columns)
    return reduce_latest(concat_keys(kept), columns)


def concat_keys(tables: Sequence[pa.Table]) -> pa.Table:
    """Key tables of several files as one: integer keys of different widths (an Int32 key
    stored as int64 in one file) widen, so that the row checks, not Arrow, refuse a value."""
    return pa.concat_tables(tables, promote_options="permissive")


def reduce_latest(table: pa.Table, columns: SourceColumns) -> pa.Table:
    """The rows of `table` latest per entity; ties keep the row that comes first."""
    return table.take(_latest(table, columns))


def _empty_keys(columns: SourceColumns) -> pa.Table:
    fields = {name: pa.array([], pa.string()) for name in columns.join_keys}
    fields.update({EVENT_TS: pa.array([], pa.timestamp("us", "UTC"))})
    if columns.created_ts:
        fields[CREATED_TS] = pa.array([], pa.timestamp("us", "UTC"))
    fields.update({_FILE: pa.array([], pa.int32()), _ROW: pa.array([], pa.int64())})
    return pa.table(fields)


@dataclass(frozen=True)
class Latest:
    """The latest row per entity, by position: (file index, row number in the file)."""

    columns: SourceColumns
    files: list[str]
    where: pa.Table  # _FILE, _ROW; sorted

    @property
    def num_rows(self) -> int:
        return int(self.where.num_rows)

    def chunks(self, max_rows: int, features: Sequence[str] | None = None) -> Iterator[pa.Table]:
        """The rows, as the view names its columns (+ EVENT_TS), at most `max_rows` at once;
        of `features` only (and the join keys) when given."""
        files = self.where[_FILE].to_numpy()
        rows = self.where[_ROW].to_numpy()
        columns = self.columns
        if features is not None:
            columns = replace(columns, features={f: columns.features[f] for f in features})
        for index in np.unique(files).tolist():
            wanted = rows[files == index]
            for table in _rows_of(columns, self.files[index], wanted):
                for first in range(0, table.num_rows, max_rows):
                    yield table.slice(first, max_rows)

    def to_table(self) -> pa.Table:
        parts = list(self.chunks(BATCH_ROWS))
        return pa.concat_tables(parts) if parts else _empty(self.columns)


def _key_batches(
    columns: SourceColumns,
    files: list[str],
    start_us: int,
    end_us: int,
    on_rows: Callable[[int], None] | None,
    first_file: int = 0,
) -> Iterator[pa.Table]:
    """Join keys, timestamps and positions of the rows in the window, batch by batch."""
    renames = columns.renames()
    keys = columns.read_keys()
    wanted = [*keys.values(), columns.event_ts, *filter(None, [columns.created_ts])]
    for index, path in enumerate(files, start=first_file):
        parquet = _open(path)
        _check_schema(columns, parquet.schema_arrow, path)
        unit = parquet.schema_arrow.field(columns.event_ts).type.unit
        low, high = _bounds(unit, start_us, end_us)
        ts_leaf = _leaf_index(parquet, columns.event_ts)
        offset = 0
        for group in range(parquet.metadata.num_row_groups):
            overlap = _overlap(parquet, group, ts_leaf, start_us, end_us)
            if overlap == "none":
                group_rows = parquet.metadata.row_group(group).num_rows
                offset += group_rows
                if on_rows:
                    on_rows(group_rows)
                continue
            for batch in _read_group(parquet, path, group, wanted):
                if on_rows:
                    on_rows(batch.num_rows)
                table = pa.Table.from_batches([batch]).rename_columns(
                    [renames[c] for c in batch.schema.names]
                )
                table = columns.with_constants(table)
                table = table.append_column(_FILE, pa.array(np.full(len(table), index, np.int32)))
                table = table.append_column(_ROW, pa.array(np.arange(offset, offset + len(table))))
                offset += len(table)
                if overlap == "some":
                    ts = table[EVENT_TS].cast(pa.int64())
                    table = table.filter(
                        pc.and_(pc.greater_equal(ts, low), pc.less_equal(ts, high))
                    )
                if table.num_rows:
                    _check_keys(columns, table, path)
                    yield table


def _rows_of(columns: SourceColumns, path: str, wanted: Any) -> Iterator[pa.Table]:
    """Full rows number `wanted` (sorted) of a file, read only from the batches holding them."""
    parquet = _open(path)
    renames = columns.renames()
    # a stream feature view lists its join keys among its features too: one column serves both
    order = list(dict.fromkeys([*columns.join_keys, *columns.features, EVENT_TS]))
    names = list(renames)
    offset = 0
    for group in range(parquet.metadata.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        lo, hi = np.searchsorted(wanted, [offset, offset + size])
        if lo < hi:
            start = offset
            for batch in _read_group(parquet, path, group, names):
                end = start + batch.num_rows
                a, b = np.searchsorted(wanted, [start, end])
                if a < b:
                    table = pa.Table.from_batches([batch]).take(pa.array(wanted[a:b] - start))
                    table = table.rename_columns([renames[c] for c in table.column_names])
                    yield columns.with_constants(table).select(order)
                start = end
        offset += size


def _read_group(parquet: Any, path: str, group: int, names: list[str]) -> Iterator[Any]:
    try:
        yield from parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=names)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read row group {group}: {exc}") from exc


def _open(path: str) -> Any:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read Parquet file {path}: {exc}") from exc


def _latest(table: pa.Table, columns: SourceColumns) -> pa.Array:
    """Per entity key, the index of its row with the greatest (event, created) timestamps."""
    if table.num_rows == 0:
        return pa.array([], pa.int64())
    order = [(k, "ascending") for k in columns.join_keys] + [(EVENT_TS, "descending")]
    if columns.created_ts:
        order.append((CREATED_TS, "descending"))
    by = table.select([name for name, _ in order])
    indices = pc.sort_indices(by, sort_keys=order)  # stable; null created times sort last
    first = np.zeros(table.num_rows, np.bool_)
    first[0] = True
    for key in columns.join_keys:
        column = by[key].take(indices).combine_chunks()
        differs = pc.not_equal(column.slice(1), column.slice(0, len(column) - 1))
        first[1:] |= differs.to_numpy(zero_copy_only=False)
    return indices.filter(pa.array(first))


def _empty(columns: SourceColumns) -> pa.Table:
    names = [*columns.join_keys, *columns.features, EVENT_TS]
    return pa.table({name: pa.array([], pa.null()) for name in names})


# --- checks -----------------------------------------------------------------------------


def check_source(view: FeatureViewPlan, files: list[str]) -> None:
    """Every file's schema against the view's, before any row is read."""
    columns = SourceColumns.of(view)
    for path in files:
        _check_schema(columns, _open(path).schema_arrow, path)


def _check_schema(columns: SourceColumns, schema: pa.Schema, path: str) -> None:
    wanted = {**columns.read_keys(), **columns.features}
    for name, raw in wanted.items():
        if raw not in schema.names:
            raise DataError(f"{path}: no column {raw!r} (feature view {columns.view!r})")
        arrow_type = schema.field(raw).type
        if not _compatible(columns.dtypes[name], arrow_type):
            hint = (
                " (Feast's materialize cannot write an Arrow map: store a struct or JSON text)"
                if "map<" in str(arrow_type) or columns.dtypes[name] == "Array(Map)"
                else ""
            )
            raise DataError(
                f"{path}: column {raw!r} is {arrow_type}, but feature view "
                f"{columns.view!r} declares {name!r} as {columns.dtypes[name]}{hint}"
            )
    for raw in filter(None, (columns.event_ts, columns.created_ts)):
        if raw not in schema.names:
            raise DataError(f"{path}: no timestamp column {raw!r} (feature view {columns.view!r})")
        if not pa.types.is_timestamp(schema.field(raw).type):
            raise DataError(
                f"{path}: timestamp column {raw!r} is {schema.field(raw).type}, not a timestamp"
            )


def _compatible(dtype: str, arrow_type: Any) -> bool:
    """Whether Feast's materialize can write a column of `arrow_type` as `dtype`."""
    t = pa.types

    def text(a: Any) -> bool:
        return bool(t.is_string(a) or t.is_large_string(a))

    if text(arrow_type) and dtype.startswith(("Map", "Struct(", "Array(Map)", "Array(Struct(")):
        return True  # JSON text: Feast parses it
    if dtype == "Array(Map)":
        return False  # Feast refuses lists of structs for Array(Map): they reach it as arrays
    for outer in ("Array(", "Set("):
        if dtype.startswith(outer) and dtype.endswith(")"):
            is_list = t.is_list(arrow_type) or t.is_large_list(arrow_type)
            return is_list and _compatible(dtype[len(outer) : -1], arrow_type.value_type)
    if t.is_dictionary(arrow_type):
        return _compatible(dtype, arrow_type.value_type)
    if dtype in ("Map", "Json") or dtype.startswith("Struct("):
        return bool(t.is_struct(arrow_type) or text(arrow_type) or t.is_null(arrow_type))
    checks: dict[str, Callable[[Any], bool]] = {
        "Int64": t.is_integer,
        "Int32": t.is_integer,
        "Float64": lambda a: t.is_floating(a) or t.is_integer(a),
        "Float32": lambda a: t.is_floating(a) or t.is_integer(a),
        "String": lambda a: t.is_string(a) or t.is_large_string(a),
        "Bytes": lambda a: t.is_binary(a) or t.is_large_binary(a),
        "Bool": t.is_boolean,
        "UnixTimestamp": lambda a: t.is_timestamp(a) or t.is_integer(a),
        "PdfBytes": lambda a: t.is_binary(a) or t.is_large_binary(a),
        "ImageBytes": lambda a: t.is_binary(a) or t.is_large_binary(a),
        "Uuid": text,
        "TimeUuid": text,
        "Decimal": lambda a: text(a) or t.is_decimal(a),
    }
    check = checks.get(dtype)
    return bool(check and (check(arrow_type) or t.is_null(arrow_type)))


def _check_keys(columns: SourceColumns, table: pa.Table, path: str) -> None:
    for name, raw in columns.read_keys().items():
        nulls = table[name].null_count
        if nulls:
            raise DataError(f"{path}: join key column {raw!r} has {nulls} null values")


# --- time -------------------------------------------------------------------------------


def _micros(moment: datetime) -> int:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    delta = aware - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _bounds(unit: str, start_us: int, end_us: int) -> tuple[int, int]:
    """[start, end] in the column's unit, exactly (inclusive both ends)."""
    per_s = _UNITS_PER_S[unit]
    if per_s >= 1_000_000:
        factor = per_s // 1_000_000
        return start_us * factor, end_us * factor
    factor = 1_000_000 // per_s
    return -(-start_us // factor), end_us // factor


def _leaf_index(parquet: Any, name: str) -> int | None:
    """The Parquet column (leaf) index of top-level column `name`: list columns before it
    make it differ from the Arrow field index."""
    schema = parquet.metadata.schema
    return next((i for i in range(len(schema)) if schema.column(i).path == name), None)


def _overlap(parquet: Any, group: int, column: int | None, start_us: int, end_us: int) -> str:
    """ "none"/"all" when the row group's statistics prove its timestamps are outside/inside
    the window (nulls count as outside), else "some"."""
    if column is None:
        return "some"
    stats = parquet.metadata.row_group(group).column(column).statistics
    if stats is None or not stats.has_min_max:
        return "some"
    low, high = stats.min, stats.max
    if not (isinstance(low, datetime) and isinstance(high, datetime)):
        return "some"
    low_us, high_us = _micros(low), _micros(high)
    if high_us < start_us or low_us > end_us:
        return "none"
    if start_us <= low_us and high_us < end_us and stats.has_null_count and not stats.null_count:
        return "all"
    return "some"
