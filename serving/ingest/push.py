"""Push: rows for a push source, written as Feast's `store.push` writes them.

A push source feeds one or more feature views (their `stream_source`). Pushed rows carry the
views' source columns: join keys, features under their source names (a batch source's
`field_mapping` applies, as in Feast) and the batch source's timestamp field. For each view:
- online: each entity's latest pushed row, encoded with materialize's encoders and written
  with its guard (never over a newer stored row: such rows are counted, not written);
- offline: the rows appended to the view's Parquet batch source (a new part file in a
  folder source; a single-file source rewritten whole, atomically), so training sees what
  serving saw.
Every row is checked (types, Feast's write-time refusals, timestamps no further in the future
than the allowed skew) before anything is written; an error names the column and row.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import logging
import time
import uuid
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from serving.errors import DataError, InvalidRequestError, echo
from serving.files import write_atomic
from serving.ingest.windows import StreamAck, WindowWriter
from serving.repo.plan import DUMMY_ENTITY_ID, Column, FeatureViewPlan, ServingPlan
from serving.store import codec, encoding
from serving.store.online_store import OnlineStore
from serving.store.window_tiles import Events
from serving.store.write_guard import framed_batches

log = logging.getLogger(__name__)
WRITE_ROWS = 1_000  # rows per guarded script call, as materialize
MAX_FUTURE_SKEW_S = 300.0  # a pushed event time may be this far ahead of the server's clock
_US = 1_000_000


class PushTarget(enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"
    ONLINE_AND_OFFLINE = "online_and_offline"

    @property
    def online(self) -> bool:
        return self is not PushTarget.OFFLINE

    @property
    def offline(self) -> bool:
        return self is not PushTarget.ONLINE


@dataclass(frozen=True)
class PushResult:
    rows_written: int  # online: rows written, over all the views fed
    rows_older_than_stored: int  # online: rows not written, a newer one being stored
    rows_appended: int = 0  # offline: rows appended, over all the views fed
    # online: per view, the event times (UTC us) of the rows sent to it and when Redis
    # acknowledged them (servable from then on): freshness
    written_at_us: Mapping[str, tuple[int, Sequence[int]]] = field(default_factory=dict)


def push_schema(plan: ServingPlan, source: str) -> list[Column]:
    """The columns a push to `source` carries: each view's join keys, features (source names)
    and timestamp field (as UnixTimestamp: int64 UTC microseconds on the wire)."""
    columns: dict[str, Column] = {}
    for view in plan.push_views(source):
        for column in _source_columns(view):
            known = columns.setdefault(column.name, column)
            if known.dtype != column.dtype:
                raise DataError(
                    f"push source {source!r}: column {column.name!r} is {known.dtype} in one "
                    f"view and {column.dtype} in another"
                )
    return list(columns.values())


def created_columns(plan: ServingPlan, source: str) -> list[Column]:
    """Columns a push may carry besides its schema: the views' created-timestamp columns
    (Feast's push requires them; when absent, the push time is recorded offline)."""
    names = {
        v.source.created_timestamp_column
        for v in plan.push_views(source)
        if v.source is not None and v.source.created_timestamp_column
    }
    return [Column(name, "UnixTimestamp") for name in sorted(names)]


def push_columns(plan: ServingPlan, source: str, given: Collection[str]) -> list[Column]:
    """The columns a push of `given` column names carries: the push schema, and those of the
    optional created-timestamp columns it gives."""
    return [
        *push_schema(plan, source),
        *(c for c in created_columns(plan, source) if c.name in given),
    ]


def _source_columns(view: FeatureViewPlan) -> list[Column]:
    if view.source is None:
        raise DataError(
            f"feature view {view.name!r}: its push source has no Parquet batch source, so "
            "Carrara cannot tell its timestamp field"
        )
    renamed = {feature: name for name, feature in view.source.field_mapping.items()}
    keys = [k for k in view.join_keys if k.name != DUMMY_ENTITY_ID]
    taken = view.event_columns if view.windowed else view.features  # events, or values
    features = [Column(renamed.get(f.name, f.name), f.dtype) for f in taken]
    return [*keys, *features, Column(view.source.timestamp_field, "UnixTimestamp")]


class Pusher:
    """Pushes for one plan and online store; thread-safe (it keeps no state between pushes)."""

    def __init__(
        self,
        plan: ServingPlan,
        repo: Path,
        store: OnlineStore | None,
        max_future_skew_s: float = MAX_FUTURE_SKEW_S,
    ) -> None:
        self.plan = plan
        self.repo = repo
        self.store = store
        self.max_future_skew_s = max_future_skew_s
        self._windows: WindowWriter | None = None

    def windows(self) -> WindowWriter:
        """The writer of windowed views (made on first use: it needs one Redis server)."""
        if self._windows is None:
            if self.store is None:
                raise DataError("push: no online store configured")
            self._windows = WindowWriter(self.plan, self.store)
        return self._windows

    def push(
        self,
        source: str,
        columns: Mapping[str, Sequence[Any]],
        to: PushTarget = PushTarget.ONLINE,
        now_s: float | None = None,
        ack: StreamAck | None = None,
    ) -> PushResult:
        """Write `columns` (the push schema's, event times in UTC microseconds) to every view
        `source` feeds; all rows of all views are checked before the first write. Windowed
        views add the rows as events (with `ack`, stream entries not applied before)."""
        views = self.plan.push_views(source)
        schema = push_columns(self.plan, source, columns)
        rows = _check_columns(source, columns, schema)
        _check_times(columns, schema, now_s, self.max_future_skew_s)
        plain = [v for v in views if not v.windowed]
        prepared = [(view, *self._online_rows(view, columns, rows)) for view in plain]
        events = [self._events(v, columns, rows, ack) for v in views if v.windowed and to.online]
        written = older = appended = 0
        acknowledged: dict[str, tuple[int, Sequence[int]]] = {}
        if to.online:
            if self.store is None:
                raise DataError("push: no online store configured")
            for view, batches, event_us in prepared:
                counts = self.store.write_view(view.name, [f.name for f in view.features], batches)
                written, older = written + counts.written, older + counts.skipped
                acknowledged[view.name] = (int(time.time() * _US), event_us)
            if events:  # after the plain views: a redelivery finds those written, these not
                applied = self.windows().apply(events, ack)
                written, older = written + applied.applied, older + applied.repeated
                at_us = int(time.time() * _US)
                acknowledged.update({e.view.name: (at_us, e.event_us) for e in events})
        if to.offline:
            for view in views:
                appended += self._append_offline(view, columns, rows)
        return PushResult(written, older, appended, acknowledged)

    def _online_rows(
        self, view: FeatureViewPlan, columns: Mapping[str, Sequence[Any]], rows: int
    ) -> tuple[list[Any], list[int]]:
        """The view's rows in Feast's bytes, each entity's latest only, in write batches.
        Every row is encoded, so each is checked as Feast checks it, written or not."""
        names = [c.name for c in _source_columns(view)]
        ts_field = names[-1]
        keys = self._keys(view, columns, rows)
        latest = _latest_rows(keys, columns[ts_field])
        stamps = pa.array([columns[ts_field][i] for i in latest], pa.timestamp("us", "UTC"))
        values = []
        for feature, name in zip(view.features, names[-1 - len(view.features) : -1], strict=True):
            column = list(columns[name])
            _check_width(view, feature, column)
            try:
                encoded = encoding.encode_values(feature.dtype, _arrow(feature.dtype, column))
            except codec.CodecError as exc:
                raise InvalidRequestError(f"columns.{name}: {exc}") from None
            values.append([encoded[i] for i in latest])
        event_ts = encoding.encode_timestamps(stamps)
        batches = list(framed_batches([keys[i] for i in latest], event_ts, values, WRITE_ROWS))
        return batches, [columns[ts_field][i] for i in latest]

    def _events(
        self,
        view: FeatureViewPlan,
        columns: Mapping[str, Sequence[Any]],
        rows: int,
        ack: StreamAck | None,
    ) -> Events:
        names = [c.name for c in _source_columns(view)]
        values = dict(
            zip(
                (c.name for c in view.event_columns),
                names[-1 - len(view.event_columns) : -1],
                strict=True,
            )
        )
        return self.windows().events(
            view,
            self._keys(view, columns, rows),
            list(columns[names[-1]]),
            {event: columns[name] for event, name in values.items()},
            list(ack.entry_ids) if ack is not None else None,
        )

    def _keys(
        self, view: FeatureViewPlan, columns: Mapping[str, Sequence[Any]], rows: int
    ) -> list[bytes]:
        names = [k.name for k in view.join_keys]
        values = [[""] * rows if n == DUMMY_ENTITY_ID else list(columns[n]) for n in names]
        try:
            return encoding.encode_entity_keys(
                names,
                [k.dtype for k in view.join_keys],
                values,
                self.plan.project,
                self.plan.entity_key_serialization_version,
            )
        except codec.CodecError as exc:
            raise InvalidRequestError(f"columns ({', '.join(names)}): {exc}") from None

    def _append_offline(
        self, view: FeatureViewPlan, columns: Mapping[str, Sequence[Any]], rows: int
    ) -> int:
        assert view.source is not None  # _source_columns refused it
        path = Path(view.source.path)
        path = path if path.is_absolute() else self.repo / path
        table = _pushed_table(view, columns, int(time.time() * _US))
        if path.is_dir():
            schema = _folder_schema(path)
            part = path / f"pushed-{uuid.uuid4().hex}.parquet"
            _write_table(_conform(table, schema, path), part)
        else:
            with _locked(path):  # read, append, replace: one pusher at a time, or rows are lost
                existing = pq.read_table(path)
                appended = pa.concat_tables([existing, _conform(table, existing.schema, path)])
                _write_table(appended, path)
        log.info("push: %d rows appended to %s (view %r)", rows, path, view.name)
        return rows


def _check_columns(
    source: str, columns: Mapping[str, Sequence[Any]], schema: Sequence[Column]
) -> int:
    for column in schema:
        if column.name not in columns:
            raise InvalidRequestError(f"columns.{column.name} is missing (push source {source!r})")
    unknown = sorted(set(columns) - {c.name for c in schema})
    if unknown:
        raise InvalidRequestError(
            f"columns: {echo(unknown[0])} is not a column of push source {source!r}"
        )
    lengths = {len(columns[c.name]) for c in schema}
    if len(lengths) != 1:
        raise InvalidRequestError("columns differ in length: give one value per row in each")
    rows = lengths.pop()
    if rows == 0:
        raise InvalidRequestError("columns hold no rows")
    return rows


def _check_times(
    columns: Mapping[str, Sequence[Any]],
    schema: Sequence[Column],
    now_s: float | None,
    skew_s: float,
) -> None:
    limit = int(((time.time() if now_s is None else now_s) + skew_s) * _US)
    for column in schema:
        if column.dtype != "UnixTimestamp":
            continue
        for row, value in enumerate(columns[column.name]):
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidRequestError(
                    f"columns.{column.name} row {row}: an event time is int64 UTC microseconds"
                )
            if value > limit:
                raise InvalidRequestError(
                    f"columns.{column.name} row {row}: event time {value} us is more than "
                    f"{skew_s:g} s in the future"
                )


def _latest_rows(keys: Sequence[bytes], event_us: Sequence[int]) -> list[int]:
    """Per key, the row with the latest event time (the last such row on a tie), in first-seen
    key order."""
    best: dict[bytes, int] = {}
    for row, key in enumerate(keys):
        known = best.get(key)
        if known is None or event_us[row] >= event_us[known]:
            best[key] = row
    return list(best.values())


def _check_width(view: FeatureViewPlan, feature: Column, column: Sequence[Any]) -> None:
    """Feast's write-time check of `vector_index` features: every vector of the declared
    width (or of the first vector's, when none is declared)."""
    if not feature.vector_index:
        return
    width = feature.vector_length
    for row, value in enumerate(column):
        if value is None:
            continue
        width = width or len(value)
        if len(value) != width:
            raise InvalidRequestError(
                f"feature view {view.name!r}, feature {feature.name!r} row {row}: a vector of "
                f"{len(value)} values, expected vector_length {width}"
            )


_ARROW_SCALARS = {
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "Float32": pa.float32(),
    "Float64": pa.float64(),
    "String": pa.string(),
    "Bool": pa.bool_(),
    "Bytes": pa.binary(),
    "PdfBytes": pa.binary(),
    "ImageBytes": pa.binary(),
    "UnixTimestamp": pa.timestamp("s", "UTC"),
}


def _arrow(dtype: str, column: list[Any]) -> Any:
    """A column as materialize's encoders take it: Arrow for scalars and their lists, the
    Python objects (dicts, text) for the rest."""
    scalar = _ARROW_SCALARS.get(dtype)
    if scalar is not None:
        return pa.array(column, scalar)
    element = _ARROW_SCALARS.get(dtype.removeprefix("Array(").removesuffix(")"))
    if dtype.startswith("Array(") and element is not None:
        return pa.array(column, pa.list_(element))
    return column


def _pushed_table(
    view: FeatureViewPlan, columns: Mapping[str, Sequence[Any]], now_us: int
) -> pa.Table:
    """The pushed rows as the batch source holds them; a created-timestamp column, when the
    source has one, says when they were pushed."""
    assert view.source is not None  # _source_columns refused it
    *values, stamp = _source_columns(view)
    arrays = {c.name: _arrow_column(c.dtype, list(columns[c.name])) for c in values}
    micros = pa.timestamp("us", "UTC")
    arrays[stamp.name] = pa.array(list(columns[stamp.name]), micros)
    created = view.source.created_timestamp_column
    if created:
        given = columns.get(created)
        stamps = list(given) if given is not None else [now_us] * len(arrays[stamp.name])
        arrays[created] = pa.array(stamps, micros)
    return pa.table(arrays)


def _arrow_column(dtype: str, values: list[Any]) -> Any:
    converted = _arrow(dtype, values)
    return converted if isinstance(converted, pa.Array) else pa.array(values)


def _folder_schema(folder: Path) -> pa.Schema | None:
    files = sorted(p for p in folder.rglob("*.parquet") if p.is_file())
    return pq.read_schema(files[0]) if files else None


def _conform(table: pa.Table, schema: pa.Schema | None, path: Path) -> pa.Table:
    """The pushed rows in the batch source's own schema (column order and types)."""
    if schema is None:
        return table
    missing = [name for name in schema.names if name not in table.column_names]
    for name in missing:
        table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise DataError(f"push: the rows do not fit the schema of {path}: {exc}") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on a lock file beside `path` (other processes and threads wait)."""
    with (path.parent / f".{path.name}.lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def _write_table(table: pa.Table, path: Path) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_atomic(path, sink.getvalue().to_pybytes())


def push_file(
    repo: Path,
    source: str,
    path: Path,
    to: PushTarget = PushTarget.ONLINE,
    redis_url: str | None = None,
    max_future_skew_s: float = MAX_FUTURE_SKEW_S,
) -> PushResult:
    """`carrara push`: the rows of a Parquet file (the push source's columns, its timestamp
    field a timestamp column) pushed as the Push RPC pushes them."""
    from serving.repo.compile import ensure_plan
    from serving.store.settings import redis_settings

    plan = ensure_plan(repo)
    plan.push_views(source)  # an unknown push source is named before the file is read
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    wanted = _wanted(table, push_columns(plan, source, table.column_names))
    columns = {name: _file_column(table, column, path) for name, column in wanted}
    store = OnlineStore(redis_settings(repo, redis_url), plan.project) if to.online else None
    try:
        return Pusher(plan, repo, store, max_future_skew_s).push(source, columns, to)
    finally:
        if store is not None:
            store.close()


def _wanted(table: pa.Table, schema: Sequence[Column]) -> list[tuple[str, Column]]:
    """The file's columns of the push schema; extra columns (e.g. `created`) are ignored, as
    Feast ignores them, and a missing one is left for the push to name."""
    return [(c.name, c) for c in schema if c.name in table.column_names]


def _file_column(table: pa.Table, column: Column, path: Path) -> list[Any]:
    data = table[column.name]
    if column.dtype == "UnixTimestamp" and pa.types.is_timestamp(data.type):
        micros = data.cast(pa.timestamp("us", "UTC")).cast(pa.int64())
        if micros.null_count:
            raise DataError(f"{path}: column {column.name!r} holds a null event time")
        return list(micros.to_pylist())
    return list(data.to_pylist())
