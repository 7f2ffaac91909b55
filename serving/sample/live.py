"""The demo's live part: the sample world's zone events replayed through a Redis Stream into
the windowed view, then a burst of trip requests pushed into one zone and priced again.

The last `REPLAY_MINUTES` of `zone_events.parquet`, moved forward in time so they end now,
are XADDed to a stream (in time order, as fast as Redis takes them) while `carrara ingest`'s
ingester runs in a thread; the windows pricing_v2 reads are then live. A burst (`Push`, the
gRPC call) of trip requests into one zone shows the 1-minute window and the surge price move.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

from serving.client import PredictionClient
from serving.errors import CarraraError
from serving.ingest.stream import ingest

STREAM = "zone_events:live"
SOURCE = "zone_events"
REPLAY_MINUTES = 16  # the longest window (15 min) and a tile more
INGEST_TIMEOUT_S = 120.0
_US = 1_000_000


@dataclass(frozen=True)
class Replay:
    events: int
    seconds: float
    dead: int


def replay(repo: Path, redis_url: str, now_s: float | None = None) -> Replay:
    """The world's last minutes of events, ending now, through a stream and an ingester."""
    table = pq.read_table(repo / "data" / "zone_events.parquet")
    micros = table["event_timestamp"].cast(pa.timestamp("us", "UTC")).cast(pa.int64())
    end_us = pc.max(micros).as_py()
    shift_us = int((now_s or time.time()) * _US) - end_us
    recent = table.filter(pc.greater_equal(micros, end_us - REPLAY_MINUTES * 60 * _US))
    rows = recent.drop_columns(["event_timestamp"]).to_pylist()
    times = recent["event_timestamp"].cast(pa.timestamp("us", "UTC")).cast(pa.int64()).to_pylist()
    client = redis.Redis.from_url(redis_url)
    ingester = ingest(repo, STREAM, redis_url, consumer="demo", batch=1_000)
    failed: list[CarraraError] = []

    def consume() -> None:
        try:
            ingester.run()
        except CarraraError as exc:  # said once, by the demo, not as a thread's traceback
            failed.append(exc)

    worker = threading.Thread(target=consume, name="carrara-demo-ingest", daemon=True)
    started = time.perf_counter()
    worker.start()
    try:
        _send(client, rows, [t + shift_us for t in times])
        deadline = time.monotonic() + INGEST_TIMEOUT_S
        while ingester.stats.events < len(rows):  # bounded by the deadline
            if failed:
                raise failed[0]
            if time.monotonic() > deadline or not worker.is_alive():
                raise CarraraError(
                    f"the demo's ingester took {ingester.stats.events} of {len(rows)} events "
                    f"in {INGEST_TIMEOUT_S:g} s"
                )
            time.sleep(0.02)
    finally:
        ingester.stop.set()
        worker.join(timeout=30)
        client.close()
    return Replay(len(rows), time.perf_counter() - started, ingester.stats.dead)


def _send(client: redis.Redis, rows: Sequence[dict[str, object]], times_us: Sequence[int]) -> None:
    pipe = client.pipeline(transaction=False)
    for i, (row, at_us) in enumerate(zip(rows, times_us, strict=True)):
        entry = {**row, "event_timestamp": at_us}
        pipe.xadd(STREAM, {b"source": SOURCE.encode(), b"row": orjson.dumps(entry)})
        if i % 2_000 == 1_999:
            pipe.execute()
    pipe.execute()


def burst(client: PredictionClient, zone: int, requests: int) -> None:
    """`requests` trip requests pushed into `zone` over the last 30 s (the Push RPC)."""
    now_us = int(time.time() * _US)
    times = [now_us - (30 * _US * i) // requests for i in range(requests)]
    client.push(
        SOURCE,
        {
            "zone_id": [zone] * requests,
            "trip_requested": [1] * requests,
            "driver_available": [0] * requests,
            "event_timestamp": times,
        },
    )
