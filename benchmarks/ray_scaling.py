"""Benchmark: `--engine ray` on 1 and 2 worker nodes against the local engine, in one run.

- score: N request rows (trips of a small sample world, drawn with replacement, one Parquet
  file in row groups of 256 k rows), the eta model, point in time. Local: `score_file` with
  every core; Ray: `RayScorer` on a private cluster of a head (no CPUs) and W worker nodes of
  one CPU each. The outputs must be identical.
- materialize: N rows of a hand-made view (driver_id Int64; Float32, Int64 and String
  features) in hive-partitioned day folders, N/20 entities. Local: `materialize` with the
  local engine; Ray: `RayMaterializer` on the same clusters. Each run into an emptied private
  redis-server; the Redis contents must be identical (`DEBUG DIGEST`).
- overhead: the same two jobs at 10 k rows, Ray's wall time minus the local engine's.

Peak memory per worker: each Ray task reports its worker process's peak RSS; the largest is
kept. Rates are rows/s of wall time, in-process (the driver is this process), the cluster
already started and connected.

    python -m benchmarks.ray_scaling [--rows 10000000] [--small] [--out FILE.json]
    python -m benchmarks.ray_scaling --small --repo R --registry M   # an existing world
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import redis

from benchmarks.batch_score import SMALL, build_world
from benchmarks.harness import per_second, redis_server, stamp, table, write_json
from serving.batch.materialize import materialize
from serving.batch.ray_engine.local_cluster import LocalRayCluster
from serving.batch.ray_engine.materialize import RayMaterializer
from serving.batch.ray_engine.score import RayScorer
from serving.batch.ray_engine.session import connect
from serving.batch.score import ScoreRequest, score_file
from serving.repo.feast_registry import _len_record
from serving.repo.plan import (
    PLAN_FILE,
    BatchSource,
    Column,
    FeatureViewPlan,
    ServingPlan,
    save_plan,
)

T0 = datetime(2026, 10, 1, tzinfo=UTC)
DAYS = 10
FILES_PER_DAY = 2
SEED = 20261202
PROJECT = "scaling"
RIDES = FeatureViewPlan(
    name="rides",
    join_keys=(Column("driver_id", "Int64"),),
    features=(Column("rate", "Float32"), Column("trips", "Int64"), Column("kind", "String")),
    ttl_s=0,
    source=BatchSource("data/rides", "event_timestamp", "created"),
)
OVERHEAD_ROWS = 10_000
TARGETS = {"score_2_vs_1": 1.6, "score_per_core_vs_local": 0.9, "materialize_2_vs_local": 0.8}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=None, help="rows of each big job (10 M; --small: 20 k)"
    )
    parser.add_argument("--small", action="store_true", help="a tiny run, for a quick check")
    parser.add_argument("--workers", type=int, default=2, help="the largest cluster's workers")
    parser.add_argument("--repo", type=Path, help="an applied repo with data (skips building)")
    parser.add_argument("--registry", type=Path, help="its model registry (with eta)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/ray_scaling.json"))
    parser.add_argument(
        "--ray-address", help="run on this cluster only, instead of private 1..W-worker ones"
    )
    args = parser.parse_args(argv)
    rows = args.rows or (20_000 if args.small else 10_000_000)
    overhead_rows = 2_000 if args.small else OVERHEAD_ROWS
    with tempfile.TemporaryDirectory(prefix="ray-scaling-", dir="/tmp") as tmp:
        work = Path(tmp)
        if args.repo and args.registry:
            repo, registry = args.repo, args.registry
        else:
            repo, registry = build_world(SMALL, work / "world")
        result = run(work, repo, registry, rows, overhead_rows, args.workers, args.ray_address)
    result.update(stamp(), small=args.small)
    write_json(args.out, result)
    report(result)
    return 0


def run(
    work: Path,
    repo: Path,
    registry: Path,
    rows: int,
    overhead_rows: int,
    max_workers: int,
    given_address: str | None = None,
) -> dict[str, Any]:
    requests = write_requests(repo, work / "requests.parquet", rows)
    small_requests = write_requests(repo, work / "requests-small.parquet", overhead_rows)
    with redis_server(work / "redis", ["--enable-debug-command", "local"]) as port:
        url = f"redis://127.0.0.1:{port}/0"
        big_repo = write_materialize_repo(work / "mat-big", port, rows)
        small_repo = write_materialize_repo(work / "mat-small", port, overhead_rows)

        def score(source: Path, output: Path) -> ScoreRequest:
            return ScoreRequest(repo, registry, "eta", source, output)

        local = {"score": timed(partial(score_file, score(requests, work / "local.parquet")))}
        local["materialize"] = timed_materialize(big_repo, url, None)
        expected = digest(url)
        local["score_small"] = timed(partial(score_file, score(small_requests, work / "ls.pq")))
        local["materialize_small"] = timed_materialize(small_repo, url, None)
        result: dict[str, Any] = {"rows": rows, "overhead_rows": overhead_rows, "local": local}

        def on_ray(address: str, name: str) -> dict[str, Any]:
            scorer = RayScorer(address)
            out = work / f"{name}.parquet"
            runs: dict[str, Any] = {"score": timed(partial(scorer.score, score(requests, out)))}
            runs["score"]["stages"] = dict(scorer.stages.seconds)
            runs["score"]["peak_worker_rss_mb"] = scorer.stages.peak_worker_rss_mb
            runs["score"]["identical"] = same_file(out, work / "local.parquet")
            runs["materialize"] = timed_materialize(big_repo, url, RayMaterializer(address))
            runs["materialize"]["identical"] = digest(url) == expected
            small_out = work / "rs.parquet"
            small = RayScorer(address)
            runs["score_small"] = timed(partial(small.score, score(small_requests, small_out)))
            small_engine = RayMaterializer(address)
            runs["materialize_small"] = timed_materialize(small_repo, url, small_engine)
            runs["cpus"] = connect(address).cpus
            return runs

        for name, address in clusters(work, max_workers, given_address):
            result[name] = on_ray(address, name)
    return result | {"ratios": ratios(result, max_workers)}


def timed(call: Callable[[], Any]) -> dict[str, Any]:
    started = time.perf_counter()
    report = call()
    wall_s = time.perf_counter() - started
    return {"wall_s": wall_s, "rows": report.rows, "rows_per_s": per_second(report.rows, wall_s)}


def timed_materialize(repo: Path, url: str, engine: RayMaterializer | None) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    started = time.perf_counter()
    report = materialize(repo, T0, T0 + timedelta(days=DAYS), redis_url=url, engine=engine)
    wall_s = time.perf_counter() - started
    rows = sum(v.rows_scanned for v in report.views)
    figures: dict[str, Any] = {
        "wall_s": wall_s,
        "rows": rows,
        "entity_rows": report.entity_rows,
        "rows_per_s": per_second(rows, wall_s),
    }
    if engine is not None:
        figures["stages"] = dict(engine.stages.seconds)
        figures["peak_worker_rss_mb"] = engine.stages.peak_worker_rss_mb
    return figures


def digest(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        return str(client.execute_command("DEBUG", "DIGEST"))
    finally:
        client.close()


def same_file(a: Path, b: Path) -> bool:
    return bool(pq.read_table(a).equals(pq.read_table(b)))


def clusters(work: Path, max_workers: int, given: str | None) -> Iterator[tuple[str, str]]:
    """("ray_W", address) of a private cluster of W workers, W = 1 .. max_workers, each
    stopped before the next starts; or ("ray_given", the given address) alone."""
    if given:
        yield "ray_given", given
        return
    for workers in range(1, max_workers + 1):
        with cluster(work / f"ray{workers}", workers) as address:
            yield f"ray_{workers}", address


@contextmanager
def cluster(workdir: Path, workers: int) -> Iterator[str]:
    """A head with no CPUs and `workers` worker nodes of one CPU each."""
    started = time.perf_counter()
    ray_cluster = LocalRayCluster(workdir, workers=workers, cpus_per_node=1)
    try:
        ray_cluster.start()
        print(
            f"ray: {workers} workers up in {time.perf_counter() - started:.1f} s", file=sys.stderr
        )
        yield ray_cluster.address
    finally:
        ray_cluster.stop()


# --- inputs --------------------------------------------------------------------------------


def write_requests(repo: Path, path: Path, rows: int) -> Path:
    """`rows` trips of the world drawn with replacement (entity keys, request data, time)."""
    trips = pq.read_table(repo / "data" / "trips.parquet").drop_columns(["duration_s"])
    rng = np.random.default_rng(SEED)
    with pq.ParquetWriter(path, trips.schema) as writer:
        for first in range(0, rows, 1_000_000):
            picked = rng.integers(0, trips.num_rows, min(1_000_000, rows - first))
            writer.write_table(trips.take(pa.array(picked)), row_group_size=256 * 1024)
    return path


def write_materialize_repo(root: Path, port: int, rows: int) -> Path:
    """A hand-made repo (current plan and registry, as `carrara apply` leaves one) whose view
    reads `rows` rows in DAYS day folders of FILES_PER_DAY files."""
    data = root / "data"
    data.mkdir(parents=True)
    (root / "feature_store.yaml").write_text(
        f"project: {PROJECT}\nregistry: data/registry.db\nprovider: local\n"
        f'online_store:\n    type: redis\n    connection_string: "127.0.0.1:{port}"\n'
    )
    rng = np.random.default_rng(SEED)
    entities = max(100, rows // 20)
    files = DAYS * FILES_PER_DAY
    for index in range(files):
        day = index // FILES_PER_DAY
        folder = data / "rides" / f"day={(T0 + timedelta(days=day)).date()}"
        folder.mkdir(parents=True, exist_ok=True)
        count = rows // files + (1 if index < rows % files else 0)
        pq.write_table(
            _rides(rng, day, count, entities),
            folder / f"part-{index}.parquet",
            row_group_size=128 * 1024,
        )
    record = _len_record(1, _len_record(1, b"rides") + _len_record(2, PROJECT.encode()))
    registry = _len_record(6, record)
    (data / "registry.db").write_bytes(registry)
    plan = ServingPlan(PROJECT, hashlib.sha256(registry).hexdigest(), {"rides": RIDES}, {}, {})
    save_plan(plan, data / PLAN_FILE)
    return root


def _rides(rng: np.random.Generator, day: int, rows: int, entities: int) -> pa.Table:
    start_us = int((T0 + timedelta(days=day)).timestamp() * 1e6)
    events = start_us + rng.integers(0, 86_400_000_000, rows)
    return pa.table(
        {
            "driver_id": pa.array(rng.integers(0, entities, rows), pa.int64()),
            "event_timestamp": pa.array(events, pa.timestamp("us", "UTC")),
            "created": pa.array(events + 60_000_000, pa.timestamp("us", "UTC")),
            "rate": pa.array(rng.random(rows, np.float32), pa.float32()),
            "trips": pa.array(rng.integers(0, 50, rows), pa.int64()),
            "kind": pa.array(np.array(["car", "van", "bike"])[rng.integers(0, 3, rows)]),
        }
    )


# --- report --------------------------------------------------------------------------------


def ratios(result: dict[str, Any], max_workers: int) -> dict[str, Any]:
    """Each Ray run against the local engine (per core: the local engine uses every core of
    this machine, a Ray run its cluster's CPUs), and the largest cluster against one worker."""
    local = result["local"]
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {"cores": cores}
    for name in (k for k in result if k.startswith("ray_")):
        runs = result[name]
        out[name] = {
            "score_per_core_vs_local": (runs["score"]["rows_per_s"] / runs["cpus"])
            / (local["score"]["rows_per_s"] / cores),
            "materialize_vs_local": runs["materialize"]["rows_per_s"]
            / local["materialize"]["rows_per_s"],
            "overhead_score_s": runs["score_small"]["wall_s"] - local["score_small"]["wall_s"],
            "overhead_materialize_s": runs["materialize_small"]["wall_s"]
            - local["materialize_small"]["wall_s"],
        }
    top = f"ray_{max_workers}"
    if "ray_1" in result and top in result and top != "ray_1":
        for job in ("score", "materialize"):
            out[f"{job}_{max_workers}_vs_1"] = (
                result[top][job]["rows_per_s"] / result["ray_1"][job]["rows_per_s"]
            )
    return out


def report(result: dict[str, Any]) -> None:
    rows = []
    for name in ("local", *(k for k in result if k.startswith("ray_"))):
        runs = result[name]
        for job in ("score", "materialize", "score_small", "materialize_small"):
            run = runs[job]
            rows.append(
                [
                    name,
                    job,
                    f"{run['rows']:,}",
                    f"{run['wall_s']:.2f}",
                    f"{run['rows_per_s']:,.0f}",
                    f"{run.get('peak_worker_rss_mb', 0):,.0f}",
                    str(run.get("identical", "-")),
                ]
            )
    print(table(rows, ["engine", "job", "rows", "wall s", "rows/s", "worker MiB", "identical"]))
    for name in (k for k in result if k.startswith("ray_")):
        for job in ("score", "materialize"):
            stages = ", ".join(f"{k} {v:.2f} s" for k, v in result[name][job]["stages"].items())
            print(f"{name} {job} stages: {stages}")
    r = result["ratios"]
    for name in (k for k in r if k.startswith("ray_")):
        x = r[name]
        print(
            f"{name}: overhead at {result['overhead_rows']:,} rows: score "
            f"{x['overhead_score_s']:+.2f} s, materialize {x['overhead_materialize_s']:+.2f} s "
            f"(target < 5 s); score per core vs local {x['score_per_core_vs_local']:.2f}x "
            f"(target 0.9x); materialize vs local {x['materialize_vs_local']:.2f}x (target 0.8x)"
        )
    scaling = [k for k in r if k.endswith("_vs_1")]
    print(
        "ratio: "
        + (", ".join(f"{k.replace('_', ' ')} {r[k]:.2f}x" for k in scaling) or "one cluster only")
        + " (target: score 2 vs 1 worker 1.6x)"
    )


if __name__ == "__main__":
    sys.exit(main())
