"""Benchmark: `carrara ingest` events/s from a Redis Stream, against Feast's `store.push` of
the same rows in the same batch size, same Redis, in one run.

A small repo of one feature view on a push source (zone_id; drivers Int64, ratio Float64).
The stream is filled first (XADD, pipelined, not timed); the ingester then drains it with a
consumer group (batches of `--batch`), one process, each entry acknowledged after its write;
timed until the last entry is handled.
The peer pushes the same rows as DataFrames of `--batch` rows. Events/s for both, and their
ratio.

The windowed scenario (issue #16's target: 50,000 events/s with the aggregations on): a
StreamFeatureView on a second push source, sums of two event columns over 60/300/900 s windows
(tiles of 10 s), fed the same number of events over (a) 64 and (b) 5,000 zones, event times
spread over the last minute (so 6 tiles), drained the same way, each on its own stream and its
own zones. Each is printed with its ratio to the plain ingest of the same run (the peer), and
with where its time went: the ingester's CPU, redis-server's CPU, and the window script's
(EVALSHA) time per call from Redis INFO commandstats.

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

PLAIN_DEFINITIONS = """
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, PushSource
from feast.aggregation import Aggregation
from feast.stream_feature_view import StreamFeatureView
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
# A zone's events summed over 1, 5 and 15 minutes (benchmarks/freshness.py reads it too).
WINDOWED_DEFINITIONS = """
zone_events = PushSource(
    name="zone_events",
    batch_source=FileSource(path="data/zone_events.parquet", timestamp_field="event_timestamp"),
)
aggregations = [
    Aggregation(column=column, function="sum", time_window=timedelta(seconds=seconds))
    for column in ("trips", "drivers_free")
    for seconds in (60, 300, 900)
]
zone_activity = StreamFeatureView(
    name="zone_activity",
    entities=[zone],
    ttl=timedelta(minutes=30),
    source=zone_events,
    schema=[Field(name="zone_id", dtype=Int64), Field(name="trips", dtype=Int64),
            Field(name="drivers_free", dtype=Int64)]
    + [Field(name=a.resolved_name(a.time_window), dtype=Int64) for a in aggregations],
    aggregations=aggregations,
    timestamp_field="event_timestamp",
    enable_tiling=True,
    tiling_hop_size=timedelta(seconds=10),
)
"""
DEFINITIONS = PLAIN_DEFINITIONS + WINDOWED_DEFINITIONS
STREAM = "supply_events"
ZONES = 5_000
WINDOWED_ZONES = (64, 5_000)
SPREAD_US = 60_000_000  # the windowed events' times cover the last minute


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
    write_no_events(repo)
    apply_repo(repo)
    return repo


def write_no_events(repo: Path) -> None:
    """WINDOWED_DEFINITIONS' batch source, empty: its events arrive by stream."""
    events = {
        "zone_id": pa.array([], pa.int64()),
        "trips": pa.array([], pa.int64()),
        "drivers_free": pa.array([], pa.int64()),
        "event_timestamp": pa.array([], pa.timestamp("us", "UTC")),
    }
    pq.write_table(pa.table(events), repo / "data" / "zone_events.parquet")


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


def window_rows(n: int, zones: int, first_zone: int) -> list[dict[str, Any]]:
    """Events of `zones` zones (ids from `first_zone`, so scenarios share no entity), in
    time order over the last minute: each zone's windows move as a live stream's would."""
    start = int(datetime.now(UTC).timestamp() * 1e6) - SPREAD_US
    step = SPREAD_US // max(n, 1)
    return [
        {
            "zone_id": first_zone + i % zones,
            "trips": i % 3,
            "drivers_free": (i // 3) % 5,
            "event_timestamp": start + i * step,
        }
        for i in range(n)
    ]


def fill_stream(
    client: Any, events: list[dict[str, Any]], stream: str = STREAM, source: str = "supply"
) -> None:
    pipe = client.pipeline(transaction=False)
    for i, row in enumerate(events):
        pipe.xadd(stream, {b"source": source.encode(), b"row": json.dumps(row).encode()})
        if i % 5_000 == 4_999:
            pipe.execute()
    pipe.execute()


def carrara_ingest(
    repo: Path,
    url: str,
    events: list[dict[str, Any]],
    batch: int,
    stream: str = STREAM,
    source: str = "supply",
) -> dict[str, Any]:
    """Drain a filled stream with one in-process ingester: its wall time, its own CPU time,
    redis-server's CPU time and the window script's time in Redis over the drain."""
    import redis

    from benchmarks.harness import cpu_seconds
    from serving.ingest.stream import ingest

    client: Any = redis.Redis.from_url(url)
    fill_stream(client, events, stream, source)
    ingester = ingest(repo, stream, url, consumer="bench", batch=batch)
    redis_pid = int(client.info("server")["process_id"])
    client.config_resetstat()
    redis_cpu, own_cpu = cpu_seconds(redis_pid), time.process_time()
    started = time.perf_counter()
    stats = ingester.run(max_events=len(events))  # not idle_exit: its last read blocks 250 ms
    seconds = time.perf_counter() - started
    own_cpu, redis_cpu = time.process_time() - own_cpu, cpu_seconds(redis_pid) - redis_cpu
    commands = client.info("commandstats")
    script = commands.get("cmdstat_evalsha", {})
    client.delete(stream)
    if stats.events != len(events) or stats.dead:
        raise RuntimeError(f"ingested {stats}")
    return {
        "seconds": seconds,
        "events_per_s": len(events) / seconds,
        "ingester_cpu_s": own_cpu,
        "redis_cpu_s": redis_cpu,
        "script_calls": int(script.get("calls", 0)),
        "script_ms_per_call": float(script.get("usec_per_call", 0.0)) / 1e3,
        "script_s": float(script.get("usec", 0)) / 1e6,
        "redis_command_s": {
            name.removeprefix("cmdstat_"): float(stat["usec"]) / 1e6
            for name, stat in sorted(commands.items(), key=lambda kv: -kv[1]["usec"])[:4]
        },
    }


def windowed_ingest(repo: Path, url: str, n: int, batch: int) -> dict[int, dict[str, Any]]:
    """The windowed view fed `n` events, once per zone count, each on its own stream."""
    return {
        zones: carrara_ingest(
            repo,
            url,
            window_rows(n, zones, first_zone=1_000_000 * (k + 1)),
            batch,
            stream=f"zone_events_{zones}",
            source="zone_events",
        )
        for k, zones in enumerate(WINDOWED_ZONES)
    }


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
        plain = carrara_ingest(repo, url, events, args.batch)
        windowed = windowed_ingest(repo, url, n, args.batch)
        theirs = feast_push(repo, events[:feast_n], args.batch)
        load_after = os.getloadavg()
    ours = plain["seconds"]
    out = {
        **stamp(),
        "small": args.small,
        "events": n,
        "batch": args.batch,
        "carrara_events_per_s": n / ours,
        "feast_push_rows_per_s": feast_n / theirs,
        "ratio": (n / ours) / (feast_n / theirs),
        "load_average_before": load,
        "load_average_after": load_after,
        "plain": plain,
        "windowed": {str(zones): result for zones, result in windowed.items()},
    }
    for zones, result in windowed.items():
        out[f"windowed_{zones}_zones_events_per_s"] = result["events_per_s"]
        out[f"windowed_{zones}_zones_ratio_to_plain"] = result["events_per_s"] / (n / ours)
    out["targets"] = {
        f"windowed, {zones} zones: >= 50,000 events/s": result["events_per_s"] >= 50_000
        for zones, result in windowed.items()
    }
    print_results(out, n, feast_n, theirs)
    write_json(args.out, out)
    print(f"-> {args.out}")
    return 0


def print_results(out: dict[str, Any], n: int, feast_n: int, feast_s: float) -> None:
    runs = [("carrara ingest", out["plain"])]
    runs += [(f"windowed, {z} zones", r) for z, r in out["windowed"].items()]
    rows: list[list[Any]] = [
        [
            name,
            n,
            round(r["seconds"], 2),
            round(r["events_per_s"]),
            round(r["events_per_s"] / out["carrara_events_per_s"], 2),
            round(r["ingester_cpu_s"], 2),
            round(r["redis_cpu_s"], 2),
            round(r["script_ms_per_call"], 2),
        ]
        for name, r in runs
    ]
    rows.append(["feast store.push", feast_n, round(feast_s, 2), round(feast_n / feast_s)])
    rows[-1] += [round(out["feast_push_rows_per_s"] / out["carrara_events_per_s"], 2), "", "", ""]
    headers = ["variant", "rows", "seconds", "rows/s", "/ plain", "ingester cpu s"]
    print(table(rows, [*headers, "redis cpu s", "script ms/call"]))
    for zones in out["windowed"]:
        ratio = out[f"windowed_{zones}_zones_ratio_to_plain"]
        print(f"events/s windowed ({zones} zones) / plain ingest: {ratio:.2f}x")
    for check, ok in out["targets"].items():
        print(f"{'PASS' if ok else 'MISS'}  {check}")
    print(f"events/s carrara ingest / feast push: {out['ratio']:.1f}x")


if __name__ == "__main__":
    raise SystemExit(main())
