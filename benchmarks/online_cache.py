"""The feature-cache study of benchmarks/online.py (`--feature-cache N`), in the same run.

ETA, 1 row, over ZIPF_DRIVERS drivers drawn by a Zipf law (exponent ZIPF_S; the world's
latest complete driver rows copied to new driver ids, fresh): the echo floor again, then
`carrara serve` with the cache off and with `--feature-cache-entries N`, each through the
harness's latency phase (one client, one call at a time) and throughput phase (--clients
processes, each run starting at a random place in the request pool, so that no phase replays
the requests of another). The hit rate (per Redis key: the driver, two zones and the route)
comes from the cached server's own metrics; predictions of both servers for the same
requests must be identical. Last, the invalidation delay: a driver's value written through
serving.store.writes, then Predict called until it shows it.
"""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.harness import Latency, latency
from benchmarks.online import (
    ClientPool,
    Config,
    Inputs,
    Job,
    World,
    carrara_server,
    echo_server,
    measure,
    predict_request,
)
from serving.ports import free_port

ZIPF_DRIVERS = 100_000
ZIPF_S = 1.0  # Zipf's law proper: the k-th most popular driver is asked for ~1/k as often
FIRST_ID = 10_000_000  # the copied drivers' ids start here, beyond the world's own
DELAY_SAMPLES = 50


def write_zipf_drivers(world: World, count: int) -> float:
    """`count` drivers with the world's latest complete rows (cycled), event time now."""
    import numpy as np
    import pandas as pd

    from serving.repo.plan import RepoFiles, load_plan
    from serving.store import encoding
    from serving.store.online_store import OnlineStore
    from serving.store.settings import RedisSettings
    from serving.store.write_guard import RowBatch

    plan = load_plan(RepoFiles.locate(world.repo))
    view = plan.feature_views["driver_stats"]
    frame = pd.read_parquet(world.repo / "data" / "driver_stats.parquet")
    latest = frame.sort_values("event_timestamp").groupby("driver_id").tail(1).dropna()
    rows = latest.iloc[np.arange(count) % len(latest)]
    started = time.perf_counter()
    store = OnlineStore(RedisSettings(world.redis_url), plan.project)
    try:
        for at in range(0, count, 1_000):
            part = rows.iloc[at : at + 1_000]
            ids = list(range(FIRST_ID + at, FIRST_ID + at + len(part)))
            batch = RowBatch(
                encoding.encode_entity_keys(["driver_id"], ["Int64"], [ids], plan.project),
                encoding.encode_timestamps(np.full(len(ids), int(time.time() * 1e6), np.int64)),
                [encoding.encode_values(f.dtype, part[f.name].to_numpy()) for f in view.features],
            )
            store.write_view(view.name, [f.name for f in view.features], [batch])
    finally:
        store.close()
    return time.perf_counter() - started


def zipf_pool(world: World, count: int, requests: int, seed: int) -> list[Inputs]:
    """`requests` ETA 1-row requests: a Zipf-drawn driver on a trip of the world, now."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, count + 1) ** ZIPF_S
    drivers = FIRST_ID + rng.choice(count, size=requests, p=weights / weights.sum())
    trips = pd.read_parquet(world.repo / "data" / "trips.parquet")
    sample = trips.iloc[rng.integers(0, len(trips), requests)]
    now_s = int(time.time())
    pool = []
    for driver, (_, trip) in zip(drivers.tolist(), sample.iterrows(), strict=True):
        entities = {
            "driver_id": [driver],
            "pickup_zone_id": [int(trip["pickup_zone_id"])],
            "dropoff_zone_id": [int(trip["dropoff_zone_id"])],
        }
        data: dict[str, list[Any]] = {
            c: [float(trip[c])] for c in ("pickup_lat", "pickup_lon", "dropoff_lat", "dropoff_lon")
        }
        data["request_ts_s"] = [now_s]
        pool.append((entities, data))
    return pool


def predictions(target: str, requests: tuple[Inputs, ...]) -> list[float]:
    """The server's ETA predictions for `requests`, one call each."""
    import grpc

    from serving.pb.carrara.v1 import prediction_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        replies = [stub.Predict(predict_request("eta", r), timeout=5) for r in requests]
    return [p for reply in replies for p in reply.predictions]


def cache_counters(metrics_port: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as page:
        text = page.read().decode()
    found = re.findall(r"^carrara_feature_cache_(\w+?)(?:_total)? ([0-9.e+]+)$", text, re.M)
    return {name: float(value) for name, value in found}


def invalidation_delay(world: World, target: str, driver: int, samples: int) -> dict[str, Any]:
    """Write a new acceptance_rate for `driver`, then call Predict until it shows it: the time
    from the write's return to that reply, and how many replies still showed the old value."""
    import grpc
    import numpy as np

    from serving.pb.carrara.v1 import prediction_pb2_grpc as pb_grpc
    from serving.repo.plan import RepoFiles, load_plan
    from serving.store import encoding
    from serving.store.online_store import OnlineStore
    from serving.store.settings import RedisSettings
    from serving.store.write_guard import RowBatch

    project = load_plan(RepoFiles.locate(world.repo)).project
    store = OnlineStore(RedisSettings(world.redis_url), project)
    request = predict_request("eta", zipf_pool(world, 1, 1, 0)[0])
    request.entities["driver_id"].int64_values.values[:] = [driver]
    request.return_features = True
    delays, stale_replies = [], 0
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        at = list(stub.Predict(request, timeout=5).feature_names).index(
            "driver_stats__acceptance_rate"
        )
        try:
            for i in range(samples):
                value = np.float32(0.001 * (i + 1))
                stub.Predict(request, timeout=5)  # cached before the write
                batch = RowBatch(
                    encoding.encode_entity_keys(["driver_id"], ["Int64"], [[driver]], project),
                    encoding.encode_timestamps(np.array([int(time.time() * 1e6)], np.int64)),
                    [encoding.encode_values("Float32", np.array([value], np.float32))],
                )
                store.write_view("driver_stats", ["acceptance_rate"], [batch])
                written = time.perf_counter_ns()
                while stub.Predict(request, timeout=5).features[0].values[at] != float(value):
                    stale_replies += 1
                delays.append(time.perf_counter_ns() - written)
        finally:
            store.close()
    return {"write_to_reply": latency(delays), "stale_replies": stale_replies}


def listener_delay(world: World, driver: int, samples: int) -> Latency:
    """In this process: from a write's return to the cache's listener having applied its
    invalidation (the invalidation delay proper, without a Predict around it)."""
    import numpy as np

    from serving.repo.plan import RepoFiles, load_plan
    from serving.store import encoding
    from serving.store.online_store import OnlineStore
    from serving.store.settings import RedisSettings
    from serving.store.write_guard import RowBatch

    project = load_plan(RepoFiles.locate(world.repo)).project
    writer = OnlineStore(RedisSettings(world.redis_url), project)
    cached = OnlineStore(RedisSettings(world.redis_url), project, feature_cache_entries=10)
    cache = cached.cache
    assert cache is not None
    key = encoding.encode_entity_keys(["driver_id"], ["Int64"], [[driver]], project)
    delays = []
    try:
        deadline = time.monotonic() + 10
        while not cache.stats().live and time.monotonic() < deadline:
            time.sleep(0.001)
        for i in range(samples):
            before = cache.stats().invalidated_keys
            batch = RowBatch(
                key,
                encoding.encode_timestamps(np.array([int(time.time() * 1e6)], np.int64)),
                [encoding.encode_values("Float32", np.array([0.5 + i * 1e-4], np.float32))],
            )
            writer.write_view("driver_stats", ["acceptance_rate"], [batch])
            written = time.perf_counter_ns()
            while cache.stats().invalidated_keys == before:
                time.sleep(0)  # lets the listener thread take the GIL at once
            delays.append(time.perf_counter_ns() - written)
    finally:
        cached.close()
        writer.close()
    return latency(delays)


def cache_study(
    cfg: Config, world: World, work: Path, pool: ClientPool, entries: int
) -> dict[str, Any]:
    drivers = 2_000 if cfg.small else ZIPF_DRIVERS
    wrote_s = write_zipf_drivers(world, drivers)
    print(f"  cache study: {drivers:,} drivers written in {wrote_s:.1f} s")
    requests = 600 if cfg.small else 40_000
    inputs = tuple(zipf_pool(world, drivers, requests, seed=11))
    check = inputs[:50]  # scored by both servers, predictions compared
    study: dict[str, Any] = {"drivers": drivers, "zipf_s": ZIPF_S, "requests": requests}
    rows = []
    with echo_server(work, cfg.threads) as echo:
        job = Job("echo", "eta", inputs[:1], target=echo.target)
        rows.append(measure(pool, cfg, world, job, echo.pids(), target="echo", processes=1))
        print(f"  cache study echo: {_brief(rows[-1])}")
    for label, extra in (("off", ()), ("on", ("--feature-cache-entries", str(entries)))):
        metrics_port = free_port()
        flags = (*extra, "--metrics-port", str(metrics_port))
        with carrara_server(world, work, 1, cfg.threads, flags) as svc:
            job = Job("carrara", "eta", inputs, target=svc.target, spread=True)
            before = cache_counters(metrics_port)
            rows.append(
                measure(
                    pool, cfg, world, job, svc.pids(), target="carrara", processes=1, cache=label
                )
            )
            after = cache_counters(metrics_port)
            rows[-1]["outputs"] = predictions(svc.target, check)
            if label == "on":
                hits = after["hits"] - before["hits"]
                misses = after["misses"] - before["misses"]
                study["hit_rate"] = hits / max(1.0, hits + misses)
                study["cache_entries_after"] = after["entries"]
                samples = 10 if cfg.small else DELAY_SAMPLES
                study["invalidation"] = invalidation_delay(world, svc.target, FIRST_ID, samples)
                study["invalidation"]["write_to_listener"] = listener_delay(
                    world, FIRST_ID + 1, 10 * samples
                )
            print(f"  cache study carrara cache {label}: {_brief(rows[-1])}")
    study["results"] = rows
    study["identical_predictions"] = rows[1]["outputs"] == rows[2]["outputs"]
    study["targets"] = cache_targets(rows)
    return study


def _brief(r: dict[str, Any]) -> str:
    lat: Latency = r["latency"]
    return f"p50 {lat.p50_ms:.3f} ms, p99 {lat.p99_ms:.3f} ms, {r['calls_per_s']:,.0f} calls/s"


def cache_targets(rows: list[dict[str, Any]]) -> dict[str, bool]:
    echo, off, on = rows
    floor = echo["latency"]
    return {
        "cache on: ETA 1 row p50 <= echo + 0.3 ms": on["latency"].p50_ms <= floor.p50_ms + 0.3,
        "cache on: ETA 1 row p99 <= 2x echo p99": on["latency"].p99_ms <= 2 * floor.p99_ms,
        "cache off: ETA 1 row p50 <= echo + 0.45 ms": off["latency"].p50_ms <= floor.p50_ms + 0.45,
        "cache on: calls/s >= 60% of echo's": on["calls_per_s"] >= 0.6 * echo["calls_per_s"],
        "cache off: calls/s >= 60% of echo's": off["calls_per_s"] >= 0.6 * echo["calls_per_s"],
    }


def cache_report(study: dict[str, Any]) -> str:
    echo, off, on = study["results"]
    lines = [
        f"feature cache study: ETA 1 row, {study['drivers']:,} drivers (Zipf s={study['zipf_s']}),"
        f" {study['requests']:,} distinct requests; key hit rate {100 * study['hit_rate']:.1f} %",
    ]
    for name, r in (("echo (floor)", echo), ("cache off", off), ("cache on", on)):
        lat, floor = r["latency"], echo["latency"]
        share = r["calls_per_s"] / echo["calls_per_s"]
        lines.append(
            f"  {name:<13} p50 {lat.p50_ms:.3f} ms (floor {lat.p50_ms - floor.p50_ms:+.3f})"
            f"  p99 {lat.p99_ms:.3f} ms ({lat.p99_ms / floor.p99_ms:.2f}x floor)"
            f"  {r['calls_per_s']:,.0f} calls/s ({share:.0%} of floor, {r['clients']} clients)"
        )
    delay = study["invalidation"]
    w2r = delay["write_to_reply"]
    lines.append(
        f"  invalidation: write returned -> Predict shows it p50 {w2r.p50_ms:.3f} ms, "
        f"max {w2r.max_ms:.3f} ms; replies with the old value after the write returned: "
        f"{delay['stale_replies']} of {w2r.count}"
    )
    w2l = delay["write_to_listener"]
    lines.append(
        f"  invalidation delay (write returned -> applied by the listener, in process): "
        f"p50 {w2l.p50_ms:.3f} ms, p99 {w2l.p99_ms:.3f} ms, max {w2l.max_ms:.3f} ms"
    )
    lines.append(
        f"  predictions identical with the cache on and off: {study['identical_predictions']}"
    )
    lines += [f"{'PASS' if ok else 'MISS'}  {check}" for check, ok in study["targets"].items()]
    return "\n".join(lines)
