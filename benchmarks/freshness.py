"""Benchmark: event-to-servable time of a windowed view at a steady 10,000 events/s, while
`carrara serve` answers Predict under load, against the same Predict load without ingestion.

The run starts its own redis-server on a free loopback port and writes a small repository: a
zone entity; a plain feature view (zone_stats: 4 Float64 features per zone, materialized) with
a feature service and a LightGBM model over it (random data, fixed seed, registered with
`carrara models register`); and a StreamFeatureView (zone_activity) on a push source: sums of
two event columns over 60/300/900 s windows, tiles of 10 s. `carrara serve` runs as its own
process (it ticks the windows at tile boundaries) and `carrara ingest` as another, on a Redis
Stream. Three phases of `--seconds` each:

  alone      Predict load only: a child process of `--threads` threads, each a
             PredictionClient in a closed loop, 1 row per call, zones in turn (the peer);
  ingesting  the same load, plus a producer (a child process) XADDing events at `--rate`
             events/s over `--zones` zones, paced by the monotonic clock in batches of
             `--producer-batch`, each event's time its send time; the ingester applies them;
             and a prober (this process): every `--probe-every` s, one event for a zone of
             its own (so its 60 s sum goes from nothing to 1), sent to the same stream, then
             GetOnlineFeatures of that sum polled (~1 ms apart) until it reads 1:
             event-to-servable is the time seen minus the event's time (both this
             process's wall clock); the first probe is a warm-up, not counted;
  after      the Predict load alone again (alone/after bracket the ingesting phase).

Reported: event-to-servable p50/p90/p99/max, the producer's and the ingester's events/s, the
stream backlog left at the end, Predict calls/s and latency per phase, the CPU seconds each
process used while ingesting, and their ratios.

    python -m benchmarks.freshness [--small] [--seconds S] [--rate N] [--zones N]
                                   [--out benchmarks/out/freshness.json]

Every process it starts (redis-server, the carrara commands, its children) is stopped by its
pid.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    ROOT,
    cpu_seconds,
    latency,
    per_second,
    redis_server,
    run_child,
    stamp,
    stop_tree,
    table,
    write_json,
)
from benchmarks.ingest import WINDOWED_DEFINITIONS, write_no_events
from benchmarks.online import carrara_serve

BIN = Path(sys.executable).parent
SEED = 20261202
STREAM = "zone_events_stream"
SOURCE = "zone_events"
MODEL = "zone_model"
FEATURES = 4  # of the plain view
PROBE = "zone_activity:sum_trips_60s"
PROBE_ZONE = 10_000_000  # the probes' zones: above every producer zone
TARGET_RATE = 10_000
TARGET_P99_MS = 100.0
HOP_S = 10  # the windowed view's tiles

YAML = """project: freshness
registry: data/registry.db
provider: local
online_store:
    type: redis
    connection_string: "127.0.0.1:{port}"
offline_store:
    type: file
entity_key_serialization_version: 3
"""

DEFINITIONS = """
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource
from feast.aggregation import Aggregation
from feast.stream_feature_view import StreamFeatureView
from feast.types import Float64, Int64
from feast.value_type import ValueType

zone = Entity(name="zone", join_keys=["zone_id"], value_type=ValueType.INT64)
zone_stats = FeatureView(
    name="zone_stats",
    entities=[zone],
    ttl=timedelta(days=1),
    schema=[Field(name="zone_id", dtype=Int64)]
    + [Field(name=f"f{j}", dtype=Float64) for j in range(FEATURES)],
    source=FileSource(name="zone_stats_source", path="data/zone_stats.parquet",
                      timestamp_field="event_timestamp"),
)
zone_model = FeatureService(name="zone_model", features=[zone_stats])
"""


# --- the repository and the model -----------------------------------------------------------


def write_repo(repo: Path, port: int, zones: int, end: datetime) -> None:
    """Definitions, the plain view's rows (every zone fresh) and the push source's empty file."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    (repo / "data").mkdir(parents=True)
    (repo / "feature_store.yaml").write_text(YAML.format(port=port))
    (repo / ".feastignore").write_text("data/\n")
    (repo / "definitions.py").write_text(
        f"FEATURES = {FEATURES}\n" + DEFINITIONS + WINDOWED_DEFINITIONS
    )
    rng = np.random.default_rng(SEED)
    stamp_us = pa.array([end - timedelta(minutes=1)] * zones, pa.timestamp("us", "UTC"))
    stats = {"zone_id": pa.array(np.arange(zones, dtype=np.int64)), "event_timestamp": stamp_us}
    stats.update({f"f{j}": pa.array(rng.random(zones)) for j in range(FEATURES)})
    pq.write_table(pa.table(stats), repo / "data" / "zone_stats.parquet")
    write_no_events(repo)


def register_model(repo: Path, registry: Path) -> None:
    """A small LightGBM model over the plain view's features (random data: its scores do not
    matter, its cost on the request path does)."""
    import lightgbm as lgb
    import numpy as np

    rng = np.random.default_rng(SEED)
    names = [f"zone_stats__f{j}" for j in range(FEATURES)]
    x = rng.random((2_000, FEATURES))
    y = x @ rng.random(FEATURES) + rng.normal(0, 0.1, len(x))
    params = {"objective": "regression", "num_leaves": 15, "verbose": -1, "seed": SEED}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=names), num_boost_round=50)
    registry.mkdir(parents=True, exist_ok=True)
    path = registry.parent / f"{MODEL}.txt"
    booster.save_model(str(path))
    carrara(
        *("models", "register", MODEL, "--model-file", str(path)),
        *("--feature-service", MODEL, "--repo", str(repo), "--registry", str(registry)),
    )


def carrara(*args: str) -> None:
    run = run_child([str(BIN / "carrara"), *args], cwd=ROOT, timeout_s=900)
    if run.returncode:
        raise RuntimeError(f"carrara {' '.join(args[:2])} failed:\n{run.stderr[-3000:]}")


# --- the processes --------------------------------------------------------------------------


@contextmanager
def started(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process for the block's length; stopped with its descendants by pid."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        yield process
    finally:
        stop_tree(process)


def child(role: str, out: Path, *args: str) -> list[str]:
    """This module as a child process in `role` (producer or load), writing JSON to `out`."""
    return [sys.executable, "-m", "benchmarks.freshness", "--role", role, "--out", str(out), *args]


def finish(process: subprocess.Popen[bytes], out: Path, timeout_s: float) -> dict[str, Any]:
    """A child's result once it exits on its own (it is bounded by its `--seconds`)."""
    process.wait(timeout=timeout_s)
    if process.returncode:
        log = out.with_suffix(".log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{out.stem} exited with {process.returncode}:\n{log}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def wait_for_group(client: Any, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    """Until the ingester has made its consumer group (it reads the stream from its start)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # bounded by the deadline
        if process.poll() is not None:
            raise RuntimeError(f"carrara ingest exited with {process.returncode}")
        if client.exists(STREAM) and client.xinfo_groups(STREAM):
            return
        time.sleep(0.05)
    raise TimeoutError(f"carrara ingest made no group on {STREAM} within {timeout_s} s")


# --- the producer and the Predict load (child processes) ------------------------------------


def produce(url: str, rate: int, seconds: float, batch: int, zones: int) -> dict[str, Any]:
    """XADD `rate` events/s for `seconds`, a batch every batch/rate s on the monotonic clock
    (late batches are sent at once: the rate is held on average); each event's time is its
    batch's send time."""
    import redis

    client: Any = redis.Redis.from_url(url)
    every_s = batch / rate
    batches = max(1, round(seconds / every_s))
    start = time.monotonic()
    sent, late, zone = 0, 0, 0
    for k in range(batches):
        due = start + k * every_s
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        elif wait < -every_s:
            late += 1
        now_us = time.time_ns() // 1_000
        pipe = client.pipeline(transaction=False)
        for i in range(batch):
            zone = (zone + 7919) % zones  # a prime stride: every zone in turn
            row = {
                "zone_id": zone,
                "trips": i % 3,
                "drivers_free": i % 5,
                "event_timestamp": now_us,
            }
            pipe.xadd(STREAM, {b"source": SOURCE.encode(), b"row": json.dumps(row).encode()})
        pipe.execute()
        sent += batch
    took = time.monotonic() - start
    return {"events": sent, "seconds": took, "events_per_s": sent / took, "late_batches": late}


def predict_load(target: str, threads: int, seconds: float, zones: int) -> dict[str, Any]:
    """`threads` PredictionClients in closed loops for `seconds`: calls/s and latency."""
    from serving.client import PredictionClient

    samples: list[list[int]] = [[] for _ in range(threads)]
    errors = [0] * threads
    deadline = time.monotonic() + seconds

    def loop(t: int) -> None:
        client = PredictionClient(target, timeout_s=10)
        zone = t
        while time.monotonic() < deadline:  # bounded by the deadline
            zone = (zone + 7919) % zones
            started_ns = time.perf_counter_ns()
            try:
                client.predict(MODEL, {"zone_id": [zone]})
            except Exception:  # counted; the load goes on
                errors[t] += 1
                continue
            samples[t].append(time.perf_counter_ns() - started_ns)

    began = time.monotonic()
    workers = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    took = time.monotonic() - began
    every = [s for part in samples for s in part]
    return {
        "calls": len(every),
        "errors": sum(errors),
        "seconds": took,
        "calls_per_s": per_second(len(every), took),
        "latency": latency(every) if every else None,
    }


# --- the prober (this process) --------------------------------------------------------------


def probe(url: str, target: str, seconds: float, every_s: float, timeout_s: float) -> Any:
    """Every `every_s`, an event for a new zone of its own, then its 60 s sum polled over
    GetOnlineFeatures until it reads 1. Returns the event-to-servable times (ns) and how
    many probes were not visible within `timeout_s`, and the ten slowest as (seconds into
    their 10 s tile, ms): slow probes at tile boundaries point at the windows' ticks."""
    import redis

    from serving.client import PredictionClient

    client: Any = redis.Redis.from_url(url)
    reader = PredictionClient(target, timeout_s=10)
    samples: list[tuple[int, int]] = []  # (event time, event-to-servable), ns
    lost = 0
    start = time.monotonic()
    for k in range(max(1, round(seconds / every_s))):
        wait = start + k * every_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        zone = PROBE_ZONE + k
        event_ns = time.time_ns()
        row = {"zone_id": zone, "trips": 1, "drivers_free": 0, "event_timestamp": event_ns // 1000}
        client.xadd(STREAM, {b"source": SOURCE.encode(), b"row": json.dumps(row).encode()})
        seen_ns = visible(reader, zone, event_ns + int(timeout_s * 1e9))
        if k == 0:
            continue  # a warm-up: the server's first read of the windowed view
        if seen_ns is None:
            lost += 1
        else:
            samples.append((event_ns, seen_ns - event_ns))
    return samples, lost


def visible(reader: Any, zone: int, deadline_ns: int) -> int | None:
    """The wall clock (ns) at which the probe zone's sum first read 1; None by the deadline."""
    from serving.client import python_values

    while time.time_ns() < deadline_ns:  # bounded by the deadline
        reply = reader.online_features({"zone_id": [zone]}, features=[PROBE])
        if python_values(reply.features[0]) == [1]:
            return time.time_ns()
        time.sleep(0.001)  # ~1 ms between polls: the resolution, and little load
    return None


# --- the phases -----------------------------------------------------------------------------


def load_phase(work: Path, name: str, target: str, args: argparse.Namespace) -> dict[str, Any]:
    """Predict load alone: the peer."""
    out = work / f"load_{name}.json"
    load = ["--target", target, "--threads", str(args.threads), "--seconds", str(args.seconds)]
    load += ["--zones", str(args.zones)]
    with started(child("load", out, *load), out.with_suffix(".log")) as process:
        return finish(process, out, args.seconds + 120)


def ingest_phase(
    work: Path, repo: Path, url: str, svc: Any, args: argparse.Namespace
) -> dict[str, Any]:
    """Ingester, producer, Predict load and prober together; CPU seconds per process."""
    import redis

    client: Any = redis.Redis.from_url(url)
    redis_pid = int(client.info("server")["process_id"])
    command = [str(BIN / "carrara"), "ingest", "--repo", str(repo), "--stream", STREAM]
    command += ["--redis-url", url, "--batch", str(args.batch)]
    with started(command, work / "ingest.log") as ingester:
        wait_for_group(client, ingester)
        warm_s = 1.0  # the producer and the load start before the probes, end after them
        produce_args, load_args = child_args(url, svc.target, args, args.seconds + 2 * warm_s)
        pids = {"server": svc.pids(), "ingester": [ingester.pid], "redis": [redis_pid]}
        client.config_resetstat()
        cpu = {name: sum(cpu_seconds(p) for p in found) for name, found in pids.items()}
        with (
            started(
                child("producer", work / "producer.json", *produce_args), work / "producer.log"
            ) as producer,
            started(
                child("load", work / "load_ingesting.json", *load_args), work / "load_ingesting.log"
            ) as loader,
        ):
            time.sleep(warm_s)
            read_before, at_before = entries_read(client), time.monotonic()
            probes, lost = probe(url, svc.target, args.seconds, args.probe_every, 10.0)
            read_after, at_after = entries_read(client), time.monotonic()
            produced = finish(producer, work / "producer.json", args.seconds + 120)
            backlog = client.xinfo_groups(STREAM)[0]
            loaded = finish(loader, work / "load_ingesting.json", args.seconds + 120)
        cpu = {name: sum(cpu_seconds(p) for p in found) - cpu[name] for name, found in pids.items()}
        script = client.info("commandstats").get("cmdstat_evalsha", {})
    return {
        "event_to_servable": latency([took for _, took in probes]) if probes else None,
        "slowest_probes": [
            [round(at / 1e9 % HOP_S, 3), round(took / 1e6, 1)]
            for at, took in sorted(probes, key=lambda p: -p[1])[:10]
        ],
        "probes": len(probes) + lost,
        "probes_not_visible_in_10s": lost,
        "producer": produced,
        "ingester_events_per_s": per_second(read_after - read_before, at_after - at_before),
        "backlog_at_end": {"lag": backlog.get("lag"), "pending": backlog.get("pending")},
        "predict": loaded,
        "cpu_s": cpu,
        "cpu_span_s": args.seconds + 2 * warm_s,
        "ingester_redis_timeouts": log_lines(work / "ingest.log", "Redis unavailable"),
        "script_calls": int(script.get("calls", 0)),  # the window script (applies and ticks)
        "script_ms_per_call": float(script.get("usec_per_call", 0.0)) / 1e3,
    }


def child_args(
    url: str, target: str, args: argparse.Namespace, seconds: float
) -> tuple[list[str], list[str]]:
    """The producer's and the Predict load's arguments, both running `seconds`."""
    produce = ["--redis-url", url, "--rate", str(args.rate), "--seconds", str(seconds)]
    produce += ["--zones", str(args.zones), "--producer-batch", str(args.producer_batch)]
    load = ["--target", target, "--threads", str(args.threads), "--seconds", str(seconds)]
    return produce, [*load, "--zones", str(args.zones)]


def log_lines(log: Path, text: str) -> int:
    """How many lines of a process's log say `text` (the ingester's 'Redis unavailable':
    a read over the 1 s socket timeout, such as a long window script, then a retry)."""
    return sum(text in line for line in log.read_text(errors="replace").splitlines())


def entries_read(client: Any) -> int:
    groups = client.xinfo_groups(STREAM)
    return int(groups[0]["entries-read"] or 0) if groups else 0


# --- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="carrara-freshness-"))
    try:
        with redis_server(work) as port:
            repo, registry = work / "repo", work / "models"
            end = datetime.now(UTC)
            write_repo(repo, port, args.zones, end)
            carrara("apply", "--repo", str(repo))
            window = ["--start", (end - timedelta(days=1)).isoformat(), "--end", end.isoformat()]
            carrara("materialize", "--repo", str(repo), "--views", "zone_stats", *window)
            register_model(repo, registry)
            url = f"redis://127.0.0.1:{port}/0"
            load_before = os.getloadavg()
            with carrara_serve(repo, registry, work) as svc:
                alone = load_phase(work, "alone", svc.target, args)
                ingesting = ingest_phase(work, repo, url, svc, args)
                after = load_phase(work, "after", svc.target, args)
            return {"alone": alone, "ingesting": ingesting, "after": after, "load": load_before}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summary(args: argparse.Namespace, phases: dict[str, Any]) -> dict[str, Any]:
    """The result file: each phase, and the ingesting phase against the Predict-only peer
    (the mean of the phases before and after it)."""
    ingesting = phases["ingesting"]
    peers = [phases["alone"], phases["after"]]
    peer_rate = sum(p["calls_per_s"] for p in peers) / 2
    peer_p99 = sum(p["latency"]["p99_ms"] for p in peers) / 2
    with_load = ingesting["predict"]
    freshness = ingesting["event_to_servable"]
    produced = ingesting["producer"]["events_per_s"]
    p99 = freshness.p99_ms if freshness is not None else float("inf")
    check = f"event-to-servable p99 <= {TARGET_P99_MS:.0f} ms at {args.rate:,} events/s"
    return {
        **stamp(),
        "small": args.small,
        "seconds": args.seconds,
        "rate": args.rate,
        "zones": args.zones,
        "batch": args.batch,
        "threads": args.threads,
        "load_average_before": phases["load"],
        "load_average_after": os.getloadavg(),
        "event_to_servable": freshness,
        "probes": ingesting["probes"],
        "slowest_probes_s_into_tile_ms": ingesting["slowest_probes"],
        "probes_not_visible_in_10s": ingesting["probes_not_visible_in_10s"],
        "producer_events_per_s": produced,
        "ingester_events_per_s": ingesting["ingester_events_per_s"],
        "backlog_at_end": ingesting["backlog_at_end"],
        "cpu_s_while_ingesting": ingesting["cpu_s"],
        "cpu_span_s": ingesting["cpu_span_s"],
        "ingester_redis_timeouts": ingesting["ingester_redis_timeouts"],
        "script_calls": ingesting["script_calls"],
        "script_ms_per_call": ingesting["script_ms_per_call"],
        "predict_alone": phases["alone"],
        "predict_ingesting": with_load,
        "predict_after": phases["after"],
        "predict_calls_per_s_ratio": with_load["calls_per_s"] / peer_rate,
        "predict_p99_ratio": with_load["latency"]["p99_ms"] / peer_p99,
        "targets": {check: p99 <= TARGET_P99_MS and produced >= 0.95 * args.rate},
    }


def report(out: dict[str, Any]) -> None:
    fresh = out["event_to_servable"]
    if fresh is not None:
        print(
            table(
                [
                    [
                        out["probes"],
                        fresh.p50_ms,
                        fresh.p90_ms,
                        fresh.p99_ms,
                        fresh.max_ms,
                        out["probes_not_visible_in_10s"],
                    ]
                ],
                ["probes", "p50 ms", "p90 ms", "p99 ms", "max ms", "not visible"],
            )
        )
    print(
        f"events/s: producer {out['producer_events_per_s']:,.0f}, ingester "
        f"{out['ingester_events_per_s']:,.0f}; backlog at the end {out['backlog_at_end']}; "
        f"window script {out['script_calls']:,} calls, {out['script_ms_per_call']:.2f} ms/call; "
        f"ingester 'Redis unavailable' (1 s timeouts): {out['ingester_redis_timeouts']}"
    )
    print(f"slowest probes (s into their tile, ms): {out['slowest_probes_s_into_tile_ms']}")
    print("CPU s while ingesting (" + f"{out['cpu_span_s']:.0f} s): " + ", ".join(
        f"{name} {seconds:.1f}" for name, seconds in out["cpu_s_while_ingesting"].items()
    ))  # fmt: skip
    rows = []
    for name in ("alone", "ingesting", "after"):
        phase = out[f"predict_{name}"]
        lat = phase["latency"]
        rows.append([name, phase["calls"], round(phase["calls_per_s"]), lat["p50_ms"],
                     lat["p99_ms"], phase["errors"]])  # fmt: skip
    print(table(rows, ["predict", "calls", "calls/s", "p50 ms", "p99 ms", "errors"]))
    print(
        f"Predict while ingesting / alone: calls/s {out['predict_calls_per_s_ratio']:.2f}x, "
        f"p99 {out['predict_p99_ratio']:.2f}x"
    )
    for check, ok in out["targets"].items():
        print(f"{'PASS' if ok else 'MISS'}  {check}")


def child_main(args: argparse.Namespace) -> int:
    """The producer or the load generator, run as a child process."""
    if args.role == "producer":
        result = produce(args.redis_url, args.rate, args.seconds, args.producer_batch, args.zones)
    else:
        result = predict_load(args.target, args.threads, args.seconds, args.zones)
    write_json(args.out, result)
    return 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--seconds", type=float, default=30.0, help="per phase (default 30)")
    parser.add_argument("--rate", type=int, default=TARGET_RATE, help="events/s (10,000)")
    parser.add_argument("--zones", type=int, default=1_000, help="zones of the events (1,000)")
    parser.add_argument("--batch", type=int, default=1_000, help="the ingester's --batch")
    parser.add_argument("--producer-batch", type=int, default=100, help="events per XADD batch")
    parser.add_argument("--threads", type=int, default=2, help="Predict load threads (2)")
    parser.add_argument("--probe-every", type=float, default=0.05, help="seconds (0.05)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "freshness.json")
    parser.add_argument("--role", choices=("producer", "load"), help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.small and args.role is None:
        args.seconds, args.rate, args.zones, args.threads = 2.0, 2_000, 64, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.role is not None:
        return child_main(args)
    out = summary(args, run(args))
    write_json(args.out, out)
    report(out)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
