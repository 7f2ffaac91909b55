"""The online store: Feast's Redis layout, read in one round trip, written with Feast's guard.

The only runtime module that imports redis; every redis error leaves it as
StoreUnavailableError naming the redacted URL.

Reads (the request path) follow a `ReadPlan` (serving/read_plan.py) resolved at start-up: per
request only the given key values are encoded, ONE pipeline is sent (an HMGET of all fields
per distinct key per key group) and the replies are decoded straight into a float64 matrix.
- `values` is NaN wherever `status` is not PRESENT: a key, field or stored value that is
  absent or null (b""), or a String whose bytes are not in its `categories`, is MISSING.
- STALE: the view's `_ts` is older than now - ttl (ttl 0: never stale). Feast does not enforce
  ttl on Redis reads; Carrara does. A row without `_ts` has event time 0, as in Feast.
- `read_raw` returns Python values of any dtype (None unless PRESENT), for GetOnlineFeatures.

Writes (materialize): one EVAL of the write_guard.py script per batch writes each row only when
newer than the stored `_ts:<view>` (Feast's rule: skip when stored > 0 and new <= stored),
checked atomically with the HSET, so a backfill never clobbers fresher data whoever wrote it; EXPIRE
follows each written row when key_ttl_s is set, as in Feast. Up to IN_FLIGHT batches are sent
ahead of their replies, so Redis keeps working while the caller encodes the next rows.
"""

from __future__ import annotations

import enum
import math
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
import redis

from serving import codec
from serving.config import RedisSettings
from serving.errors import DataError, InvalidRequestError, StoreUnavailableError, UsageError
from serving.read_plan import NUMERIC_DTYPES, FeatureRead, KeyGroup, ReadPlan, build_read_plan
from serving.write_guard import FramedRows, RowBatch, framed_batches, write_script

READ_TIMEOUT_S = 1.0
WRITE_TIMEOUT_S = 60.0
IN_FLIGHT = 32  # write batches sent ahead of their replies: Redis never waits on the encoder
_NAN = math.nan
_US = 1_000_000
MISSING, PRESENT, STALE = 0, 1, 2  # values of a status matrix

__all__ = [
    "MISSING",
    "PRESENT",
    "STALE",
    "FramedRows",
    "OnlineRead",
    "OnlineStore",
    "RawRead",
    "ReadPlan",
    "RowBatch",
    "Status",
    "WriteCounts",
    "build_read_plan",
    "framed_batches",
]


class Status(enum.IntEnum):
    MISSING = MISSING
    PRESENT = PRESENT
    STALE = STALE


@dataclass(frozen=True)
class OnlineRead:
    values: npt.NDArray[np.float64]  # (rows, features); NaN unless PRESENT
    status: npt.NDArray[np.uint8]  # (rows, features) of Status
    event_ts_us: npt.NDArray[np.int64]  # (rows, views); 0 when absent
    missing_per_row: npt.NDArray[np.int32]  # features read that are not PRESENT


@dataclass(frozen=True)
class RawRead:
    values: list[list[object]]  # per feature, per row; None unless PRESENT
    status: npt.NDArray[np.uint8]  # (rows, features) of Status
    event_ts_us: npt.NDArray[np.int64]  # (rows, views); 0 when absent


@dataclass(frozen=True)
class WriteCounts:
    written: int = 0
    skipped: int = 0


class OnlineStore:
    """Redis holding Feast's layout for `project`; a plain connection pool, thread-safe."""

    def __init__(self, settings: RedisSettings, project: str) -> None:
        if settings.cluster:
            raise UsageError("Redis Cluster (redis_type: redis_cluster) is not supported yet")
        self.settings = settings
        self.project = project
        self._pool = redis.ConnectionPool.from_url(
            settings.url, socket_timeout=READ_TIMEOUT_S, socket_connect_timeout=READ_TIMEOUT_S
        )

    def ping(self, timeout_s: float = READ_TIMEOUT_S) -> None:
        self._send(b"*1\r\n$4\r\nPING\r\n", 1, timeout_s)

    def close(self) -> None:
        self._pool.disconnect()

    # --- reads -------------------------------------------------------------------------------

    def read(
        self,
        plan: ReadPlan,
        entities: Mapping[str, Sequence[Any]],
        now_s: float | None = None,
        timeout_s: float | None = None,
    ) -> OnlineRead:
        """The plan's feature matrix for the entity rows: one round trip, decoded to float64."""
        n, fetched = self._fetch(plan, entities, timeout_s)
        values_at, ts_at = plan.destinations(n)
        pairs = zip(plan.groups, fetched, strict=True)
        raws = [raw for group, rows in pairs for row in rows for raw in group.numeric(row)]
        flat = np.empty(len(raws))
        try:
            codec.decode_numeric("Float64", raws, flat)  # the dtype only names errors
        except codec.CodecError:
            _raise_bad_value(plan, fetched)
        values = np.full((n, len(plan.feature_names)), _NAN)
        values.reshape(-1)[values_at] = flat
        for group, rows in zip(plan.groups, fetched, strict=True):
            for feature in group.categorical:
                get = (feature.categories or {}).get
                values[:, feature.column] = [
                    get(row[feature.field_at] or b"", _NAN) for row in rows
                ]
        event_ts = np.zeros((n, len(plan.view_names)), np.int64)
        event_ts.reshape(-1)[ts_at] = _timestamps(plan, fetched)
        now_us = int((time.time() if now_s is None else now_s) * _US)
        read = values[:, plan.read_columns]
        present = ~np.isnan(read)
        stale = _stale(plan, event_ts, now_us)[:, plan.slot_of_column] & present
        status = np.zeros(values.shape, np.uint8)
        status[:, plan.read_columns] = np.where(stale, STALE, present)
        if stale.any():
            values[:, plan.read_columns] = np.where(stale, _NAN, read)
        missing = (~present | stale).sum(axis=1, dtype=np.int32)
        return OnlineRead(values, status, event_ts, missing)

    def read_raw(
        self,
        plan: ReadPlan,
        entities: Mapping[str, Sequence[Any]],
        now_s: float | None = None,
        timeout_s: float | None = None,
    ) -> RawRead:
        """Every feature of the plan as a Python value (codec.decode_value), any dtype."""
        n, fetched = self._fetch(plan, entities, timeout_s)
        event_ts = np.zeros((n, len(plan.view_names)), np.int64)
        event_ts.reshape(-1)[plan.destinations(n)[1]] = _timestamps(plan, fetched)
        fresh = ~_stale(plan, event_ts, int((time.time() if now_s is None else now_s) * _US))
        values: list[list[object]] = [[None] * n for _ in plan.feature_names]
        status = np.zeros((n, len(plan.feature_names)), np.uint8)
        for group, rows in zip(plan.groups, fetched, strict=True):
            for feature in group.features:
                column, is_fresh = values[feature.column], fresh[:, feature.slot].tolist()
                for i, row in enumerate(rows):
                    value = _decode_raw(feature, row[feature.field_at])
                    if value is not None:
                        status[i, feature.column] = PRESENT if is_fresh[i] else STALE
                        column[i] = value if is_fresh[i] else None
        return RawRead(values, status, event_ts)

    def _fetch(
        self, plan: ReadPlan, entities: Mapping[str, Sequence[Any]], timeout_s: float | None
    ) -> tuple[int, list[list[list[bytes | None]]]]:
        """One pipeline, an HMGET per distinct key of each group; replies per group and row."""
        n, columns = _entity_columns(plan, entities)
        packed: list[bytes] = []
        layout = []
        count = 0
        for group in plan.groups:
            index: dict[bytes, int] = {}
            inverse = [index.setdefault(k, len(index)) for k in _encode_keys(group, columns)]
            layout.append((count, inverse if len(index) < n else None))
            count += len(index)
            head, tail = group.hmget_head, group.hmget_fields
            for key in index:  # RESP by hand: redis-py packs ~10x slower per command
                packed += (head, b"$%d\r\n" % len(key), key, b"\r\n", tail)
        replies = self._send(b"".join(packed), count, timeout_s or READ_TIMEOUT_S)
        return n, [
            replies[at : at + n] if inverse is None else [replies[at + u] for u in inverse]
            for at, inverse in layout
        ]

    # --- writes ------------------------------------------------------------------------------

    def write_view(
        self,
        view: str,
        features: Sequence[str],
        batches: Iterable[RowBatch | FramedRows],
        on_batch: Callable[[int, int], None] | None = None,
        timeout_s: float = WRITE_TIMEOUT_S,
    ) -> WriteCounts:
        """Write the batches of one view with Feast's newer-than-stored guard, atomically.

        Each batch is one atomic script call: keep them to ~1,000 rows (Redis runs nothing
        else meanwhile). `on_batch(written, skipped)` follows each batch."""
        fields = [codec.field_name(view, f) for f in features]
        head = (b"EVAL", write_script(len(fields)))
        settings = (str(len(fields)).encode(), str(self.settings.key_ttl_s or 0).encode())
        tail = (*settings, codec.ts_field(view), *fields)
        written = skipped = 0
        conn = self._connection(timeout_s)
        pending: deque[int] = deque()
        try:
            for batch in batches:
                n = len(batch.keys)
                if not n:
                    continue
                framed = batch if isinstance(batch, FramedRows) else _framed(batch)
                command = (*head, str(n).encode(), *framed.keys, *tail, framed.rows)
                conn.send_packed_command(conn.pack_command(*command), check_health=False)
                pending.append(n)
                while len(pending) > IN_FLIGHT:  # Redis works while the caller encodes
                    done, sent = int(conn.read_response()), pending.popleft()
                    written, skipped = written + done, skipped + sent - done
                    if on_batch:
                        on_batch(done, sent - done)
            while pending:
                done, sent = int(conn.read_response()), pending.popleft()
                written, skipped = written + done, skipped + sent - done
                if on_batch:
                    on_batch(done, sent - done)
        except redis.RedisError as exc:
            conn.disconnect()
            raise self._unavailable(exc) from exc
        except BaseException:
            conn.disconnect()  # replies may be unread: never hand this connection out again
            raise
        finally:
            self._pool.release(conn)
        return WriteCounts(written, skipped)

    # --- transport -------------------------------------------------------------------------

    def _connection(self, timeout_s: float) -> Any:
        try:
            conn = self._pool.get_connection()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        conn.update_current_socket_timeout(timeout_s)
        return conn

    def _send(self, packed: bytes, replies: int, timeout_s: float) -> list[Any]:
        """Send pipelined commands (RESP bytes) and read their `replies`."""
        if not replies:
            return []
        conn = self._connection(timeout_s)
        try:
            conn.send_packed_command([packed], check_health=False)
            return [conn.read_response() for _ in range(replies)]
        except redis.RedisError as exc:
            conn.disconnect()
            raise self._unavailable(exc) from exc
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self._pool.release(conn)

    def _unavailable(self, exc: redis.RedisError) -> StoreUnavailableError:
        return StoreUnavailableError(f"Redis at {self.settings.redacted_url}: {exc}")


# --- helpers ------------------------------------------------------------------------------


def _framed(batch: RowBatch) -> FramedRows:
    if len(batch.event_ts) != len(batch.keys):
        raise DataError(f"write batch: {len(batch.keys)} keys, {len(batch.event_ts)} timestamps")
    try:
        return FramedRows.of(batch)
    except ValueError as exc:
        raise DataError(f"write batch: {exc}") from exc


def _entity_columns(
    plan: ReadPlan, entities: Mapping[str, Sequence[Any]]
) -> tuple[int, dict[str, list[Any]]]:
    columns: dict[str, list[Any]] = {}
    for name in plan.entity_columns:
        if name not in entities:
            raise InvalidRequestError(f"entities: missing column {name!r}")
        column = entities[name]
        columns[name] = column.tolist() if hasattr(column, "tolist") else list(column)
    lengths = {len(c) for c in columns.values()}
    if len(lengths) > 1:
        raise InvalidRequestError(f"entities: columns differ in length ({sorted(lengths)})")
    return (lengths.pop() if lengths else 0), columns


def _encode_keys(group: KeyGroup, columns: dict[str, list[Any]]) -> list[bytes]:
    cols = [columns[c] for c in group.columns]
    try:
        return group.encode_keys(cols)
    except (codec.CodecError, struct.error, TypeError, AttributeError, ValueError):
        pass
    for row in range(len(cols[0]) if cols else 0):  # error path: name the bad row
        try:
            group.encode_keys([c[row : row + 1] for c in cols])
        except (codec.CodecError, struct.error, TypeError, AttributeError, ValueError):
            bad = ", ".join(
                f"{c}={columns[c][row]!r} (expected {d})"
                for c, d in zip(group.columns, group.dtypes, strict=True)
            )
            raise InvalidRequestError(f"entities row {row}: {bad}") from None
    raise InvalidRequestError(f"entities {list(group.columns)}: cannot encode the keys")


def _timestamps(plan: ReadPlan, fetched: list[list[list[bytes | None]]]) -> list[int]:
    """Each row's `_ts` per view, in the order of `plan.destinations`; 0 when absent."""
    decode = codec.decode_timestamp_micros
    try:
        return [
            decode(raw) or 0
            for group, rows in zip(plan.groups, fetched, strict=True)
            for row in rows
            for raw in group.timestamps(row)
        ]
    except codec.CodecError as exc:
        raise DataError(f"a stored _ts of views {list(plan.view_names)}: {exc}") from exc


def _stale(plan: ReadPlan, event_ts: npt.NDArray[np.int64], now_us: int) -> npt.NDArray[np.bool_]:
    stale: npt.NDArray[np.bool_] = (plan.ttl_us > 0) & (event_ts < now_us - plan.ttl_us)
    return stale


def _raise_bad_value(plan: ReadPlan, fetched: list[list[list[bytes | None]]]) -> NoReturn:
    """Error path: name the feature whose stored value is not numeric."""
    for group, rows in zip(plan.groups, fetched, strict=True):
        for feature in group.features:
            if feature.categories is None and feature.dtype in NUMERIC_DTYPES:
                raws = [row[feature.field_at] for row in rows]
                try:
                    codec.decode_numeric(feature.dtype, raws, np.empty(len(raws)))
                except codec.CodecError as exc:
                    raise DataError(f"feature {feature.name}: {exc}") from exc
    raise DataError("undecodable feature values")


def _decode_raw(feature: FeatureRead, raw: bytes | None) -> object:
    try:
        return codec.decode_value(raw)
    except codec.CodecError as exc:
        raise DataError(f"feature {feature.name}: {exc}") from exc
