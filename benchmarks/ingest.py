"""Benchmark: `carrara ingest` events/s from a Redis Stream, against Feast's `store.push` of
the same rows in the same batch size, same Redis, in one run.

A small repo of one feature view on a push source (zone_id; drivers Int64, ratio Float64).
The stream is filled first (XADD, pipelined, not timed); the ingester then drains it with a
consumer group (batches of `--batch`), one process, each entry acknowledged after its write.
The peer pushes the same rows as DataFrames of `--batch` rows. Events/s for both, and their
ratio. No windowed aggregation runs here (issue #16's 50,000 events/s target is for the
ingester with aggregations on; this measures the ingest path they will sit on).

    python -m benchmarks.ingest [--small] [--events N] [--batch N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.harness import ROOT, redis_server, stamp, table, write_json
from serving.repo.compile import apply_repo, feast_context

DEFINITIONS = """
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, PushSource
from feast.types import Float64, Int64
from feast.value_type import ValueType

zone = Entity(name="zone", join_keys=["zone_id"], value_type=ValueType.INT64)
supply = PushSource(
    name="supply",
    batch_source=FileSource(path="data/supply.parquet", timestamp_field="event_timestamp"),
)
zone_supply = FeatureView(
    name="zone_supply",
    entities=[zone],
    ttl=timedelta(days=1),
    schema=[Field(name="drivers", dtype=Int64), Field(name="ratio", dtype=Float64)],
    source=supply,
)
"""
STREAM = "supply_events"
ZONES = 5_000


def make_repo(work: Path, port: int) -> Path:
    repo = work / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "bench_definitions.py").write_text(DEFINITIONS)
    (repo / "feature_store.yaml").write_text(
        "project: ingest_bench\nregistry: data/registry.db\nprovider: local\n"
        f'online_store:\n    type: redis\n    connection_string: "127.0.0.1:{port}"\n'
    )
    empty = {
        "zone_id": pa.array([], pa.int64()),
        "drivers": pa.array([], pa.int64()),
        "ratio": pa.array([], pa.float64()),
        "event_timestamp": pa.array([], pa.timestamp("us", "UTC")),
    }
    pq.write_table(pa.table(empty), repo / "data" / "supply.parquet")
    apply_repo(repo)
    return repo


def rows(n: int) -> list[dict[str, Any]]:
    start = int(datetime.now(UTC).timestamp() * 1e6) - n
    return [
        {
            "zone_id": i % ZONES,
            "drivers": i % 50,
            "ratio": (i % 50) / 7,
            "event_timestamp": start + i,
        }
        for i in range(n)
    ]


def fill_stream(client: Any, events: list[dict[str, Any]]) -> None:
    pipe = client.pipeline(transaction=False)
    for i, row in enumerate(events):
        pipe.xadd(STREAM, {b"source": b"supply", b"row": json.dumps(row).encode()})
        if i % 5_000 == 4_999:
            pipe.execute()
    pipe.execute()


def carrara_ingest(repo: Path, url: str, events: list[dict[str, Any]], batch: int) -> float:
    import redis

    from serving.ingest.stream import ingest

    client = redis.Redis.from_url(url)
    fill_stream(client, events)
    ingester = ingest(repo, STREAM, url, consumer="bench", batch=batch)
    started = time.perf_counter()
    stats = ingester.run(idle_exit=True)
    seconds = time.perf_counter() - started
    if stats.events != len(events) or stats.dead:
        raise RuntimeError(f"ingested {stats}")
    return seconds


def feast_push(repo: Path, events: list[dict[str, Any]], batch: int) -> float:
    import pandas as pd

    with feast_context(repo):
        from feast import FeatureStore

        store = FeatureStore(repo_path=str(repo))
    frames = []
    for first in range(0, len(events), batch):
        frame = pd.DataFrame(events[first : first + batch])
        frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], unit="us", utc=True)
        frames.append(frame)
    started = time.perf_counter()
    with feast_context(repo):
        for frame in frames:
            store.push("supply", frame)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ingest.json")
    args = parser.parse_args(argv)
    n = 2_000 if args.small else args.events
    events = rows(n)
    feast_n = max(args.batch, n // 10)  # Feast is slower: a tenth of the rows measures it
    with (
        tempfile.TemporaryDirectory(prefix="carrara-ingest-") as work,
        redis_server(Path(work)) as port,
    ):
        repo = make_repo(Path(work), port)
        url = f"redis://127.0.0.1:{port}/0"
        load = os.getloadavg()
        ours = carrara_ingest(repo, url, events, args.batch)
        theirs = feast_push(repo, events[:feast_n], args.batch)
    out = {
        **stamp(),
        "small": args.small,
        "events": n,
        "batch": args.batch,
        "carrara_events_per_s": n / ours,
        "feast_push_rows_per_s": feast_n / theirs,
        "ratio": (n / ours) / (feast_n / theirs),
        "load_average_before": load,
    }
    print(
        table(
            [
                ["carrara ingest", n, round(ours, 2), round(out["carrara_events_per_s"])],
                [
                    "feast store.push",
                    feast_n,
                    round(theirs, 2),
                    round(out["feast_push_rows_per_s"]),
                ],
            ],
            ["variant", "rows", "seconds", "rows/s"],
        )
    )
    print(f"events/s carrara ingest / feast push: {out['ratio']:.1f}x")
    write_json(args.out, out)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
