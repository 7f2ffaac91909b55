"""`carrara ingest`: a Redis Stream of pushed rows, consumed by a consumer group.

Each stream entry is one row for a push source: fields `source` (the push source's name;
optional when the ingester is given one) and `row`, a JSON object of the source's columns
(its timestamp field as int UTC microseconds, maps and lists as JSON). Rows are pushed with
`Pusher` (serving/ingest/push.py: the newer-than-stored guard), a batch at a time:
- an entry is acknowledged (XACK) only after its row's write; a restarted ingester first
  takes back its own pending entries, and entries a dead ingester left pending longer than
  `claim_idle_ms` are claimed (XAUTOCLAIM) by the others: delivery is at least once;
- the effect is exactly once: a redelivered row has an event time no newer than the one
  stored, so the guard skips it;
- an entry that cannot be decoded or validated goes to the dead-letter stream
  `<stream>:dead` with its id, the reason and its fields, and is acknowledged: the ingester
  keeps going;
- Redis unreachable: the ingester says so once, waits (backing off up to 5 s) and resumes;
  nothing is acknowledged that was not written.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from serving.errors import CarraraError, StoreUnavailableError, UsageError, echo
from serving.ingest.metrics import IngestMetrics
from serving.ingest.push import Pusher, push_columns
from serving.ingest.windows import StreamAck
from serving.repo.plan import FeatureViewPlan

log = logging.getLogger(__name__)
BLOCK_MS = 250  # an XREADGROUP waits this long for entries (below the socket timeout)
DEAD_SUFFIX = ":dead"
MAX_BACKOFF_S = 5.0
MAX_REASON_CHARS = 500


@dataclass
class IngestStats:
    events: int = 0  # entries taken from the stream, redeliveries included
    written: int = 0  # rows written online
    older_than_stored: int = 0  # rows skipped by the guard (redeliveries among them)
    dead: int = 0  # entries sent to the dead-letter stream
    reconnects: int = 0


@dataclass
class StreamIngester:
    client: Any  # redis-py client of the stream's Redis
    pusher: Pusher
    stream: str
    group: str = "carrara"
    consumer: str = "ingester-1"
    source: str | None = None  # the push source of entries without a `source` field
    batch: int = 500
    claim_idle_ms: int = 30_000
    from_start: bool = True  # a new group reads the stream from its first entry
    stats: IngestStats = field(default_factory=IngestStats)
    stop: threading.Event = field(default_factory=threading.Event)
    metrics: IngestMetrics | None = None  # Prometheus (--metrics-port); None: none
    # the windowed views the stream feeds (aged by ticks): all of the repo's when the
    # stream names its source per entry, else those of `source`
    windowed_views: list[FeatureViewPlan] = field(default_factory=list)
    _ticked: tuple[int, ...] = ()

    @property
    def dead_stream(self) -> str:
        return self.stream + DEAD_SUFFIX

    def run(self, max_events: int | None = None, idle_exit: bool = False) -> IngestStats:
        """Consume until `stop` is set, `max_events` entries were taken, or (with
        `idle_exit`) the stream has nothing new and nothing pending. Redis going away is
        waited out; a group that vanished with it (a restart without persistence) is made
        again, from the stream's start: the guard makes the redelivery harmless."""
        backoff, grouped = 0.0, False
        while not self.stop.is_set():  # bounded by stop, max_events or idle_exit
            if max_events is not None and self.stats.events >= max_events:
                break
            try:
                if not grouped:
                    self._create_group()
                    grouped = True
                left = None if max_events is None else max_events - self.stats.events
                taken = self.step(self.batch if left is None else min(self.batch, left))
                if not taken:
                    self._tick()  # a quiet stream: its windows still age
                backoff = 0.0
            except (redis.ConnectionError, redis.TimeoutError, StoreUnavailableError) as exc:
                backoff = min(MAX_BACKOFF_S, backoff * 2 or 0.1)
                if backoff == 0.1:
                    log.warning("ingest %s: Redis unavailable (%s); retrying", self.stream, exc)
                self.stats.reconnects += 1
                self._count("reconnects")
                self.stop.wait(backoff)
                continue
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise IngestError(f"ingest {self.stream}: Redis refused: {exc}") from None
                log.warning("ingest %s: group %r is gone; making it again", self.stream, self.group)
                grouped = False
                continue
            if not taken and idle_exit:
                break
        return self.stats

    def _tick(self) -> None:
        """Age the windows of the views this stream feeds, once per tile boundary passed."""
        views = self.windowed_views
        if not views:
            return
        tiles = tuple(int(self.pusher.windows().clock()) // v.hop_s for v in views)
        if tiles != self._ticked:  # tick() itself lets one process per tile do it
            self._ticked = tiles
            try:
                self.pusher.windows().tick(views)
            except redis.ResponseError as exc:  # refused (OOM, ...): the next tile tries again
                log.warning("ingest %s: ageing windows failed: %s", self.stream, exc)

    def step(self, count: int) -> int:
        """One batch: this consumer's pending entries first, then those others left pending
        too long, then new ones. Returns how many entries it handled."""
        entries = self._read(count, "0")  # ours, delivered before and never acknowledged
        if not entries:
            entries = self._claimed(count)
        if not entries:
            entries = self._read(count, ">", block_ms=BLOCK_MS)
        if entries:
            self._handle(entries)
        return len(entries)

    def _create_group(self) -> None:
        try:
            self.client.xgroup_create(
                self.stream, self.group, id="0" if self.from_start else "$", mkstream=True
            )
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise IngestError(f"ingest {self.stream}: cannot make group: {exc}") from None

    def _read(self, count: int, start: str, block_ms: int | None = None) -> list[Any]:
        """Entries as (id, fields) pairs, from the raw reply: redis-py's parsing of it (a
        dict per entry) cost more than all of the ingester's own work on an entry."""
        command = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count]
        if block_ms is not None:
            command += ["BLOCK", block_ms]
        reply = _raw_command(self.client, *command, "STREAMS", self.stream, start)
        return [_entry(e) for _, entries in reply or [] for e in entries if e[1] is not None]

    def _claimed(self, count: int) -> list[Any]:
        reply = self.client.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=count
        )
        return [e for e in reply[1] if e[1] is not None]

    def _handle(self, entries: Sequence[tuple[bytes, Mapping[bytes, bytes]]]) -> None:
        self.stats.events += len(entries)
        self._count("events", len(entries))
        rows: dict[str, list[_Entry]] = {}
        dead: list[tuple[_Entry, str]] = []
        for entry_id, fields in entries:
            try:
                source, row = self._decode(fields)
                rows.setdefault(source, []).append(_Entry(entry_id, fields, row))
            except ValueError as exc:
                dead.append((_Entry(entry_id, fields, {}), str(exc)))
        for source, items in rows.items():
            dead += self._push(source, items)
        self._tick()
        self._bury(dead)
        self.client.xack(self.stream, self.group, *[entry_id for entry_id, _ in entries])

    def _decode(self, fields: Mapping[bytes, bytes]) -> tuple[str, dict[str, Any]]:
        raw_source = fields.get(b"source")
        source = raw_source.decode("utf-8", "replace") if raw_source else self.source
        if not source:
            raise ValueError("the entry names no push source (field `source`)")
        raw = fields.get(b"row")
        if raw is None:
            raise ValueError("the entry has no `row` field")
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"`row` is not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise ValueError(f"`row` is a JSON {type(row).__name__}, not an object")
        return source, row

    def _push(self, source: str, items: list[_Entry]) -> list[tuple[_Entry, str]]:
        """Push a source's rows as one batch; when the batch is refused, halves of it, so
        that only the bad rows go to the dead-letter stream (the guard makes the rows a
        refused batch shares with a later one harmless to write again)."""
        try:
            self._push_rows(source, [item.row for item in items], [i.entry_id for i in items])
            return []
        except StoreUnavailableError:
            raise
        except CarraraError as exc:
            if len(items) == 1:
                return [(items[0], str(exc))]
        half = len(items) // 2
        return self._push(source, items[:half]) + self._push(source, items[half:])

    def _push_rows(self, source: str, rows: list[dict[str, Any]], entry_ids: list[bytes]) -> None:
        names = {k for row in rows for k in row}
        try:
            schema = push_columns(self.pusher.plan, source, names)
        except CarraraError as exc:
            raise _RefusedError(str(exc)) from None
        extra = sorted(names - {c.name for c in schema})
        if extra:
            raise _RefusedError(f"{echo(extra[0])} is not a column of push source {source!r}")
        columns = {c.name: [row.get(c.name) for row in rows] for c in schema}
        ack = StreamAck(
            self.stream.encode(), self.group.encode(), self.consumer.encode(), entry_ids
        )
        result = self.pusher.push(source, columns, ack=ack)
        self.stats.written += result.rows_written
        self.stats.older_than_stored += result.rows_older_than_stored
        self._count("rows_written", result.rows_written)
        self._count("rows_older_than_stored", result.rows_older_than_stored)
        if self.metrics is not None:
            for view, (at_us, event_us) in result.written_at_us.items():
                self.metrics.observe_freshness(view, ((at_us - e) / 1e6 for e in event_us))

    def _count(self, name: str, amount: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.count(name, amount)

    def _bury(self, dead: Sequence[tuple[_Entry, str]]) -> None:
        """Each entry, its id and the reason, to the dead-letter stream (before the XACK)."""
        for entry, reason in dead:
            self.stats.dead += 1
            self._count("dead_letters")
            record = {b"id": entry.entry_id, b"reason": reason[:MAX_REASON_CHARS].encode()}
            record.update({b"field:" + k: v for k, v in entry.fields.items()})
            self.client.xadd(self.dead_stream, record)
        if dead:
            log.warning(
                "ingest %s: %d entries to %s (first: %s)",
                self.stream, len(dead), self.dead_stream, dead[0][1][:200],
            )  # fmt: skip


def _raw_command(client: Any, *args: Any) -> Any:
    """One command on a pooled connection, its reply unparsed; a failed connection is
    dropped, as redis-py drops it."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_command(*args)
        reply = connection.read_response()
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
    if isinstance(reply, redis.ResponseError):
        raise reply
    return reply


def _entry(raw: Any) -> tuple[bytes, Mapping[bytes, bytes]]:
    """(id, fields) from a raw reply's [id, [field, value, ...]] (or a parsed one)."""
    entry_id, fields = raw
    if isinstance(fields, list):
        pairs = iter(fields)
        fields = dict(zip(pairs, pairs, strict=False))
    return entry_id, fields


class IngestError(CarraraError):
    """The stream cannot be read (a key that is no stream, a refused command)."""


class _RefusedError(CarraraError):
    """An entry's row that does not fit its push source."""


@dataclass(frozen=True)
class _Entry:
    entry_id: bytes
    fields: Mapping[bytes, bytes]
    row: dict[str, Any]


def ingest(repo: Path, stream: str, redis_url: str | None = None, **options: Any) -> StreamIngester:
    """An ingester for `stream` on the repo's online store (its Redis holds the stream)."""
    from serving.repo.compile import ensure_plan
    from serving.store.connection import RedisConnection
    from serving.store.online_store import OnlineStore
    from serving.store.settings import redis_settings

    plan = ensure_plan(repo)
    store = OnlineStore(redis_settings(repo, redis_url), plan.project)
    if not isinstance(store.connection, RedisConnection):
        store.close()
        raise UsageError("carrara ingest reads streams from one Redis server, not a cluster")
    client = store.connection.client()
    source = options.get("source")
    views = [v for v in plan.feature_views.values() if v.windowed and v.push_source]
    windowed = [v for v in views if source is None or v.push_source == source]
    return StreamIngester(
        client, Pusher(plan, repo, store), stream, windowed_views=windowed, **options
    )
