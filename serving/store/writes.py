"""Guarded writes: rows of one feature view, each written only when newer than what is stored.

One EVAL of the write_guard.py script per batch writes each row only when newer than the
stored `_ts:<view>` (Feast's rule: skip when stored > 0 and new <= stored), checked atomically
with the HSET, so a backfill never clobbers fresher data whoever wrote it; EXPIRE follows each
written row when key_ttl_s is set, as in Feast. Up to IN_FLIGHT batches are sent ahead of their
replies, so Redis keeps working while the caller encodes the next rows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import redis

from serving.errors import DataError
from serving.store import codec
from serving.store.connection import Connection, RedisConnection
from serving.store.write_guard import FramedRows, RowBatch, write_script

WRITE_TIMEOUT_S = 60.0
IN_FLIGHT = 32  # write batches sent ahead of their replies: Redis never waits on the encoder


@dataclass(frozen=True)
class WriteCounts:
    written: int = 0
    skipped: int = 0


def write_view(
    connection: Connection,
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
    if not isinstance(connection, RedisConnection):  # a cluster
        return _write_per_key(connection, view, fields, batches, on_batch, timeout_s)
    head = (b"EVAL", write_script(len(fields)))
    settings = (str(len(fields)).encode(), str(connection.settings.key_ttl_s or 0).encode())
    tail = (*settings, codec.ts_field(view), *fields)
    written = skipped = 0
    pending: deque[int] = deque()
    with connection.checkout(timeout_s) as conn:
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
    return WriteCounts(written, skipped)


def _framed(batch: RowBatch) -> FramedRows:
    if len(batch.event_ts) != len(batch.keys):
        raise DataError(f"write batch: {len(batch.keys)} keys, {len(batch.event_ts)} timestamps")
    try:
        return FramedRows.of(batch)
    except ValueError as exc:
        raise DataError(f"write batch: {exc}") from exc


def _write_per_key(
    connection: Connection,
    view: str,
    fields: Sequence[bytes],
    batches: Iterable[RowBatch | FramedRows],
    on_batch: Callable[[int, int], None] | None,
    timeout_s: float,
) -> WriteCounts:
    """One EVALSHA of the guard per key, each routed to its slot's master (cluster.py)."""
    from serving.store.cluster import ClusterConnection

    if not isinstance(connection, ClusterConnection):
        raise TypeError(f"no per-key writer for {type(connection).__name__}")
    script = write_script(len(fields))
    sha = connection.load_script(script)
    args = [str(len(fields)).encode(), str(connection.settings.key_ttl_s or 0).encode()]
    tail = b"".join(_bulk(a) for a in (*args, codec.ts_field(view), *fields))
    written = skipped = 0
    for batch in batches:
        framed = batch if isinstance(batch, FramedRows) else _framed(batch)
        n = len(framed.keys)
        if not n:
            continue
        head = b"*%d\r\n$7\r\nEVALSHA\r\n%s$1\r\n1\r\n" % (8 + len(fields), _bulk(sha.encode()))
        commands = [
            head + _bulk(key) + tail + _bulk(framed.row(i)) for i, key in enumerate(framed.keys)
        ]
        try:
            replies = connection.exchange_keyed(framed.keys, commands, timeout_s)
        except redis.ResponseError as exc:
            if "NOSCRIPT" not in str(exc):  # a promoted replica without the script: load it
                raise connection.unavailable(exc) from exc
            connection.load_script(script)
            replies = connection.exchange_keyed(framed.keys, commands, timeout_s)
        done = sum(int(r) for r in replies)
        written, skipped = written + done, skipped + n - done
        if on_batch:
            on_batch(done, n - done)
    return WriteCounts(written, skipped)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)
