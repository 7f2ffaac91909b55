"""The online store: Feast's Redis layout, read in one round trip, written with Feast's guard.

The only runtime module that imports redis (and hiredis); every redis error leaves it as
StoreUnavailableError naming the redacted URL.

Reads (the request path) follow a `ReadPlan` (serving/read_plan.py) resolved at start-up: per
request only the given key values are encoded, ONE pipeline is sent (an HMGET of all fields
per distinct key per key group) on the calling thread's own connection (`_Link`), and the
replies are decoded straight into a float64 matrix.
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
import functools
import math
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import hiredis
import numpy as np
import numpy.typing as npt
import redis

from serving import codec
from serving.config import RedisSettings
from serving.errors import DataError, InvalidRequestError, StoreUnavailableError, UsageError
from serving.per_thread import PerThread
from serving.read_plan import NUMERIC_DTYPES, FeatureRead, KeyGroup, ReadPlan, build_read_plan
from serving.write_guard import FramedRows, RowBatch, framed_batches, write_script

READ_TIMEOUT_S = 1.0
WRITE_TIMEOUT_S = 60.0
IN_FLIGHT = 32  # write batches sent ahead of their replies: Redis never waits on the encoder
READ_BUFFER_BYTES = 1 << 16
VECTOR_DECODE_FROM = 512  # values per read from which numpy decodes faster than a Python loop
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
        self._pool = redis.ConnectionPool.from_url(  # writes; its settings make read links too
            settings.url, socket_timeout=READ_TIMEOUT_S, socket_connect_timeout=READ_TIMEOUT_S
        )
        # the request path's connections: one per thread
        self._links = PerThread(lambda: _Link(self._new_connection))

    def ping(self, timeout_s: float = READ_TIMEOUT_S) -> None:
        self._send(b"*1\r\n$4\r\nPING\r\n", 1, timeout_s)

    def close(self) -> None:
        for link in self._links.every():
            link.close()
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
        try:  # the dtype only names errors
            decoded = (
                codec.numeric_values("Float64", raws)
                if len(raws) < VECTOR_DECODE_FROM
                else codec.numeric_array("Float64", raws)
            )
        except codec.CodecError:
            _raise_bad_value(plan, fetched)
        values = np.full((n, len(plan.feature_names)), _NAN)
        values.reshape(-1)[values_at] = decoded
        checksum = _sum(decoded)  # NaN if any value is missing (inf - inf: also checked)
        for group, rows in zip(plan.groups, fetched, strict=True):
            for feature in group.categorical:
                get = (feature.categories or {}).get
                codes = [get(row[feature.field_at] or b"", _NAN) for row in rows]
                values[:, feature.column] = codes
                checksum += sum(codes)
        event_ts = np.zeros((n, len(plan.view_names)), np.int64)
        event_ts.reshape(-1)[ts_at] = _timestamps(plan, fetched)
        now_us = int((time.time() if now_s is None else now_s) * _US)
        stale_views = _stale(plan, event_ts, now_us)
        if not math.isnan(checksum) and not stale_views.any():  # the common case: all there
            status, missing = plan.all_present(n)
            return OnlineRead(values, status, event_ts, missing)
        read = values[:, plan.read_columns]
        present = ~np.isnan(read)
        stale = stale_views[:, plan.slot_of_column] & present
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
        """Send pipelined commands (RESP bytes) on this thread's link and read `replies`."""
        if not replies:
            return []
        try:
            return self._links.get().exchange(packed, replies, timeout_s)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc

    def _new_connection(self) -> Any:
        return self._pool.connection_class(**self._pool.connection_kwargs)

    def _unavailable(self, exc: redis.RedisError) -> StoreUnavailableError:
        return StoreUnavailableError(f"Redis at {self.settings.redacted_url}: {exc}")


class _Link:
    """One thread's read connection. redis-py connects it (URL, AUTH, SELECT, TLS); the
    exchange then writes the pipeline to its socket and parses every reply with one hiredis
    reader. The pool's checkout (a poll() per call) and redis-py's per-reply read_response
    cost more than the round trip itself at 100 rows (~300 replies).

    A link used before may find that Redis restarted meanwhile: a connection error on it is
    retried once on a new connection (reads are idempotent; a timeout is not retried). Any
    failure drops the connection, so no reply is ever left unread on it.
    """

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._conn = connect()
        self._reader: Any = None
        self._buffer = bytearray(READ_BUFFER_BYTES)
        self._timeout_s: float | None = None

    def exchange(self, packed: bytes, count: int, timeout_s: float) -> list[Any]:
        reused = self._reader is not None
        try:
            return self._exchange(packed, count, timeout_s)
        except redis.ConnectionError:
            self.close()
            if not reused:
                raise
        except BaseException:
            self.close()
            raise
        try:
            return self._exchange(packed, count, timeout_s)
        except BaseException:
            self.close()
            raise

    def _exchange(self, packed: bytes, count: int, timeout_s: float) -> list[Any]:
        sock = self._socket(timeout_s)
        reader, buffer = self._reader, self._buffer
        replies: list[Any] = []
        try:
            sock.sendall(packed)
            while len(replies) < count:
                reply = reader.gets()
                if reply is False:
                    received = sock.recv_into(buffer)
                    if not received:
                        raise redis.ConnectionError("Redis closed the connection")
                    reader.feed(buffer, 0, received)
                else:
                    replies.append(reply)
        except TimeoutError as exc:  # socket.timeout
            raise redis.TimeoutError(f"Timeout after {timeout_s:g} s reading from Redis") from exc
        except (OSError, hiredis.ProtocolError) as exc:
            raise redis.ConnectionError(f"Error talking to Redis: {exc}") from exc
        if hiredis.ReplyError in map(type, replies):
            error = next(r for r in replies if isinstance(r, hiredis.ReplyError))
            raise redis.ResponseError(str(error))
        return replies

    def _socket(self, timeout_s: float) -> Any:
        if self._reader is None:
            self._conn.connect()  # raises redis.ConnectionError / TimeoutError
            self._reader = hiredis.Reader()
            self._timeout_s = None
        sock = self._conn._sock  # redis-py keeps no public accessor
        if timeout_s != self._timeout_s:
            sock.settimeout(timeout_s)
            self._timeout_s = timeout_s
        return sock

    def close(self) -> None:
        self._reader = None
        self._conn.disconnect()


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
        if not isinstance(column, list):
            column = column.tolist() if hasattr(column, "tolist") else list(column)
        columns[name] = column
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
    decode = _timestamp_micros
    try:
        return [
            decode(raw) or 0
            for group, rows in zip(plan.groups, fetched, strict=True)
            for row in rows
            for raw in group.timestamps(row)
        ]
    except codec.CodecError as exc:
        raise DataError(f"a stored _ts of views {list(plan.view_names)}: {exc}") from exc


def _sum(values: list[float] | npt.NDArray[np.float64]) -> float:
    return float(values.sum()) if isinstance(values, np.ndarray) else sum(values)


# One materialize run writes one `_ts` per view, so a read sees few distinct values: memoized.
_timestamp_micros = functools.lru_cache(maxsize=4096)(codec.decode_timestamp_micros)


def _stale(plan: ReadPlan, event_ts: npt.NDArray[np.int64], now_us: int) -> npt.NDArray[np.bool_]:
    stale: npt.NDArray[np.bool_] = event_ts < now_us - plan.ttl_or_never_us
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
