"""`--engine ray` against the local engine, on a real local Ray cluster (a head and a worker
node, each its own `ray start`, one CPU each, so tasks and objects cross nodes).

The local engine is the oracle: Redis after a Ray materialize must hold the same bytes (two
private redis-servers, every key, field and TTL compared), Ray scoring the same output rows,
Ray retrieval the same training set. Bad input fails before anything is recorded.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.batch.materialize import materialize
from serving.batch.ray_engine.local_cluster import LocalRayCluster
from serving.batch.ray_engine.materialize import RayMaterializer
from serving.cli import main
from serving.errors import DataError
from serving.ports import free_port
from serving.repo.feast_registry import _len_record, materialized_until, read_registry
from serving.repo.plan import (
    PLAN_FILE,
    BatchSource,
    Column,
    FeatureViewPlan,
    RepoFiles,
    ServingPlan,
    save_plan,
)
from serving.store.redis_process import RedisProcess, private_redis
from tests.helpers import MATERIALIZE_DAYS, WORLD_END, raw_redis, snapshot, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT = "partitioned"
T0 = datetime(2026, 10, 1, tzinfo=UTC)
DAYS = 4
TS = pa.timestamp("us", tz="UTC")
RIDES = FeatureViewPlan(
    name="rides",
    join_keys=(Column("driver_id", "Int64"),),
    features=(Column("rate", "Float32"), Column("trips", "Int64"), Column("kind", "String")),
    ttl_s=3600,
    source=BatchSource("data/rides", "event_timestamp", "created"),
)
ROUTES = FeatureViewPlan(
    name="routes",
    join_keys=(Column("city", "String"), Column("zone", "Int32")),
    features=(Column("eta_s", "Float64"),),
    ttl_s=0,
    source=BatchSource("data/routes", "ts", None, {"eta_raw": "eta_s"}),
)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster]:
    """A head and one worker node, one CPU each, on free loopback ports (~15-20 s to start
    on a loaded 2-core machine); stopped by the pids it started."""
    cluster = LocalRayCluster(tmp_path_factory.mktemp("ray"), workers=1, head_cpus=1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def second_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """The Ray engine's Redis; the session's `redis_server` gets the local engine's."""
    with private_redis(tmp_path_factory.mktemp("redis-ray")) as server:
        yield server


@pytest.fixture
def ray_redis_url(second_redis: RedisProcess) -> str:
    raw_redis(second_redis.url).flushall()
    return second_redis.url


# --- a hand-made repo whose sources are hive-partitioned folders -------------------------


def _rides(rng: np.random.Generator, day: int, rows: int) -> pa.Table:
    """Rides of one day; drivers recur across days, and the first hour of each day repeats the
    last event time of the day before with the same created time (a tie across files: the
    earlier file wins) or a later one (it wins)."""
    events = [T0 + timedelta(days=day, minutes=int(m)) for m in rng.integers(0, 1440, rows)]
    if day:
        events[: rows // 10] = [T0 + timedelta(days=day)] * (rows // 10)
    created = [
        e + timedelta(seconds=int(s)) for e, s in zip(events, rng.integers(0, 2, rows), strict=True)
    ]
    rates = rng.random(rows).astype(np.float32)
    return pa.table(
        {
            "driver_id": pa.array(rng.integers(0, 400, rows), pa.int64()),
            "event_timestamp": pa.array(events, TS),
            "created": pa.array(created, TS),
            "rate": pa.array(np.where(rng.random(rows) < 0.1, np.nan, rates), pa.float32()),
            "trips": pa.array(rng.integers(0, 50, rows), pa.int64()),
            "kind": pa.array([f"day {day} #{i}" for i in range(rows)], pa.string()),
        }
    )


def _routes(rng: np.random.Generator, day: int, rows: int) -> pa.Table:
    cities = np.array(["north", "south", "", "ü"], dtype=object)
    return pa.table(
        {
            "city": pa.array(cities[rng.integers(0, 4, rows)].tolist(), pa.string()),
            "zone": pa.array(rng.integers(-3, 30, rows), pa.int32()),
            "ts": pa.array(
                [T0 + timedelta(days=day, hours=int(h)) for h in rng.integers(0, 24, rows)],
                pa.timestamp("ns"),  # naive ns: UTC
            ),
            "eta_raw": pa.array(rng.random(rows) * 600, pa.float64()),
        }
    )


def make_partitioned_repo(root: Path, port: int) -> Path:
    """A repo with a current plan and registry, as `carrara apply` leaves it, whose two views
    read hive-partitioned folders (`day=.../part-N.parquet`, several row groups each)."""
    data = root / "data"
    data.mkdir(parents=True)
    (root / "feature_store.yaml").write_text(
        f"project: {PROJECT}\nregistry: data/registry.db\nprovider: local\n"
        f'online_store:\n    type: redis\n    connection_string: "127.0.0.1:{port}"\n'
    )
    rng = np.random.default_rng(18)
    for day in range(DAYS):
        for name, make in (("rides", _rides), ("routes", _routes)):
            folder = data / name / f"day=2026-10-0{day + 1}"
            folder.mkdir(parents=True)
            for part in range(2):
                pq.write_table(make(rng, day, 1_500), folder / f"part-{part}.parquet",
                               row_group_size=500)  # fmt: skip
    registry = b"".join(
        _len_record(
            6, _len_record(1, _len_record(1, v.encode()) + _len_record(2, PROJECT.encode()))
        )
        for v in ("rides", "routes")
    )
    (data / "registry.db").write_bytes(registry)
    plan = ServingPlan(
        PROJECT, hashlib.sha256(registry).hexdigest(), {"rides": RIDES, "routes": ROUTES}, {}, {}
    )
    save_plan(plan, data / PLAN_FILE)
    return root


@pytest.fixture
def partitioned_repo(tmp_path: Path, redis_server: RedisProcess) -> Path:
    return make_partitioned_repo(tmp_path / "repo", redis_server.port)


START, END = T0 + timedelta(hours=6), T0 + timedelta(days=DAYS - 1, hours=12)


def test_materialize_on_ray_writes_the_local_engines_bytes_from_partitioned_folders(
    partitioned_repo: Path,
    redis_url: str,
    ray_redis_url: str,
    ray_cluster: LocalRayCluster,
    capsys: pytest.CaptureFixture[str],
) -> None:
    local = materialize(partitioned_repo, START, END, redis_url=redis_url)
    window = ["--start", START.isoformat(), "--end", END.isoformat()]
    argv = ["materialize", "--repo", str(partitioned_repo), *window, "--redis-url", ray_redis_url]
    assert main([*argv, "--engine", "ray", "--ray-address", ray_cluster.address]) == 0
    out = capsys.readouterr().out
    expected = snapshot(redis_url)
    assert len(expected) == local.entity_rows > 400  # every driver and most routes
    assert snapshot(ray_redis_url) == expected
    for view in local.views:  # the CLI's per-view lines carry the same counts
        assert f"{view.rows_scanned:,} rows read, {view.entity_rows:,} entity rows" in out
    assert "stages on Ray: connect" in out
    assert "scan + shuffle" in out
    assert "write" in out

    # a second run on the cluster rewrites nothing: what a retried task would do
    engine = RayMaterializer(ray_cluster.address)
    again = materialize(partitioned_repo, START, END, redis_url=ray_redis_url, engine=engine)
    assert (again.written, again.skipped) == (0, local.entity_rows)
    assert snapshot(ray_redis_url) == expected
    until = materialized_until(read_registry(RepoFiles.locate(partitioned_repo).registry), PROJECT)
    assert until == {"rides": END, "routes": END}


def test_materialize_on_ray_of_the_sample_world_matches_the_local_engine(
    applied_repo: Path, redis_url: str, ray_redis_url: str, ray_cluster: LocalRayCluster
) -> None:
    start = WORLD_END - timedelta(days=MATERIALIZE_DAYS)
    engine = RayMaterializer(ray_cluster.address, buckets=3)
    report = materialize(applied_repo, start, WORLD_END, redis_url=ray_redis_url, engine=engine)
    local = materialize(applied_repo, start, WORLD_END, redis_url=redis_url)
    assert [(v.view, v.entity_rows, v.written) for v in report.views] == [
        (v.view, v.entity_rows, v.written) for v in local.views
    ]
    assert snapshot(ray_redis_url) == snapshot(redis_url)


def test_a_partition_whose_schema_disagrees_is_named_and_nothing_is_recorded(
    partitioned_repo: Path, ray_redis_url: str, ray_cluster: LocalRayCluster
) -> None:
    bad = partitioned_repo / "data" / "routes" / "day=2026-10-03" / "part-1.parquet"
    table = pq.read_table(bad)
    pq.write_table(table.set_column(3, "eta_raw", table["eta_raw"].cast(pa.string())), bad)
    registry = RepoFiles.locate(partitioned_repo).registry
    before = registry.read_bytes()
    engine = RayMaterializer(ray_cluster.address)
    with pytest.raises(DataError, match=r"part-1\.parquet: column 'eta_raw' is string") as info:
        materialize(partitioned_repo, START, END, redis_url=ray_redis_url, engine=engine)
    assert "day=2026-10-03" in str(info.value)
    assert registry.read_bytes() == before  # no interval recorded
    assert snapshot(ray_redis_url) == {}  # every view checked before the first write


def test_a_row_feast_would_refuse_fails_on_the_cluster_before_any_write(
    partitioned_repo: Path, ray_redis_url: str, ray_cluster: LocalRayCluster
) -> None:
    """preflight's row checks run in the reduce tasks: an Int32 key out of range in one
    partition is refused, named, and nothing of any view is written or recorded."""
    path = partitioned_repo / "data" / "routes" / "day=2026-10-02" / "part-0.parquet"
    table = pq.read_table(path)
    zones = table["zone"].cast(pa.int64()).to_pylist()
    zones[7] = 2**40
    pq.write_table(table.set_column(1, "zone", pa.array(zones, pa.int64())), path)
    engine = RayMaterializer(ray_cluster.address)
    with pytest.raises(DataError, match=r"feature view 'routes', join keys .*zone=1099511627776"):
        materialize(partitioned_repo, START, END, redis_url=ray_redis_url, engine=engine)
    assert snapshot(ray_redis_url) == {}


def test_no_reachable_cluster_is_one_line_naming_the_address(
    partitioned_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{free_port()}"
    window = ["--start", START.isoformat(), "--end", END.isoformat()]
    argv = ["materialize", "--repo", str(partitioned_repo), *window]
    assert main([*argv, "--engine", "ray", "--ray-address", address]) == 2
    err = capsys.readouterr().err
    assert f"no reachable Ray cluster at {address}" in err
    assert "Traceback" not in err
    assert main([*argv, "--ray-address", address]) == 2
    assert "--ray-address needs --engine ray" in capsys.readouterr().err


# --- scoring and training --------------------------------------------------------------


def test_score_on_ray_equals_the_local_engine_row_for_row(
    applied_repo: Path,
    trained_registry: Path,
    ray_cluster: LocalRayCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    trips = pq.read_table(applied_repo / "data" / "trips.parquet").drop_columns(["duration_s"])
    source = tmp_path / "trips.parquet"
    pq.write_table(trips, source, row_group_size=700)
    common = ["score", "--model", "eta", "--input", str(source), "--repo", str(applied_repo)]
    common += ["--registry", str(trained_registry)]
    assert main([*common, "--output", str(tmp_path / "local.parquet")]) == 0
    ray = ["--engine", "ray", "--ray-address", ray_cluster.address]
    from serving.batch.ray_engine import score as ray_score

    parts = ray_score.PART_ROWS
    ray_score.PART_ROWS = 1_000  # several parts over both actors
    try:
        assert main([*common, "--output", str(tmp_path / "ray.parquet"), *ray]) == 0
    finally:
        ray_score.PART_ROWS = parts
    out = capsys.readouterr().out
    local, on_ray = (pq.read_table(tmp_path / f"{n}.parquet") for n in ("local", "ray"))
    assert on_ray.num_rows == trips.num_rows
    assert on_ray.equals(local)
    assert "score: stages on Ray: connect" in out
    assert not list(tmp_path.glob(".ray.parquet.*"))  # the parts folder is gone


def test_score_on_ray_refuses_a_partition_missing_a_column(
    applied_repo: Path, trained_registry: Path, ray_cluster: LocalRayCluster, tmp_path: Path
) -> None:
    from serving.batch.ray_engine.score import RayScorer
    from serving.batch.score import ScoreRequest

    trips = pq.read_table(applied_repo / "data" / "trips.parquet")
    folder = tmp_path / "requests"
    for day, part in enumerate((trips.slice(0, 100), trips.slice(100, 100))):
        (folder / f"date=2026-10-0{day + 1}").mkdir(parents=True)
        if day:
            part = part.drop_columns(["pickup_lat"])
        pq.write_table(part, folder / f"date=2026-10-0{day + 1}" / "part.parquet")
    request = ScoreRequest(applied_repo, trained_registry, "eta", folder, tmp_path / "out.parquet")
    with pytest.raises(
        DataError, match=r"date=2026-10-02/part\.parquet has no column 'pickup_lat'"
    ):
        RayScorer(ray_cluster.address).score(request)
    assert not (tmp_path / "out.parquet").exists()


def test_training_set_on_ray_equals_the_local_retrieval(
    applied_repo: Path, ray_cluster: LocalRayCluster
) -> None:
    from serving.batch.ray_engine.training import RayRetrieval
    from serving.repo.compile import ensure_plan
    from serving.repo.model_kinds import model_kind
    from serving.training.training_set import join_features, load_labels, retrieval_engine

    plan = ensure_plan(applied_repo)
    spec = model_kind(applied_repo, "pricing")
    labels = load_labels(
        plan, spec.feature_service, applied_repo / spec.label_table, spec.label, (None, None)
    )
    local = join_features(applied_repo, plan, labels)
    with retrieval_engine(RayRetrieval(ray_cluster.address, block_rows=1_000)):
        on_ray = join_features(applied_repo, plan, labels)
    pd.testing.assert_frame_equal(on_ray.frame, local.frame)
    assert on_ray.fingerprint == local.fingerprint


def test_scaling_benchmark_small_run_on_the_fixture_cluster(
    applied_repo: Path,
    trained_registry: Path,
    ray_cluster: LocalRayCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """benchmarks/ray_scaling.py end to end at a tiny size, so that it cannot rot: in this
    process, on this module's cluster (private 1- and 2-worker clusters would take a minute
    to start, and a new process a few seconds to connect)."""
    import json

    from benchmarks import ray_scaling

    out = tmp_path / "ray_scaling.json"
    argv = ["--small", "--rows", "4000", "--ray-address", ray_cluster.address]
    argv += ["--repo", str(applied_repo), "--registry", str(trained_registry), "--out", str(out)]
    assert ray_scaling.main(argv) == 0
    data = json.loads(out.read_text())
    runs = data["ray_given"]
    assert runs["score"]["identical"] is True
    assert runs["materialize"]["identical"] is True
    assert runs["score"]["rows"] == data["local"]["score"]["rows"] == 4_000
    assert runs["materialize"]["peak_worker_rss_mb"] > 10
    assert {"scan + shuffle", "reduce + check", "write"} <= set(runs["materialize"]["stages"])
    assert runs["cpus"] == 2
    assert data["commit"]
    assert capsys.readouterr().out.splitlines()[-1].startswith("ratio: one cluster only")


def test_a_worker_killed_while_writing_is_retried_to_the_same_bytes(
    tmp_path: Path,
    redis_server: RedisProcess,
    redis_url: str,
    ray_redis_url: str,
    ray_cluster: LocalRayCluster,
) -> None:
    """SIGKILL to a worker process in the middle of a bucket's write: Ray runs the task again,
    the guard skips what the first attempt wrote, and Redis ends as the local engine's."""
    import threading

    root = make_partitioned_repo(tmp_path / "repo", redis_server.port)
    rng = np.random.default_rng(7)
    many = 40_000
    table = pa.table(
        {
            "driver_id": pa.array(np.arange(many), pa.int64()),
            "event_timestamp": pa.array([T0 + timedelta(hours=7)] * many, TS),
            "created": pa.array([T0 + timedelta(hours=7)] * many, TS),
            "rate": pa.array(rng.random(many, np.float32), pa.float32()),
            "trips": pa.array(rng.integers(0, 50, many), pa.int64()),
            "kind": pa.array(["a long enough value to take some writing"] * many, pa.string()),
        }
    )
    folder = root / "data" / "rides" / "day=2026-10-09"
    folder.mkdir()
    pq.write_table(table, folder / "part-0.parquet", row_group_size=10_000)
    local = materialize(root, START, END, redis_url=redis_url, views=["rides"])
    engine = RayMaterializer(ray_cluster.address)
    done: list[Any] = []
    run = threading.Thread(
        target=lambda: done.append(
            materialize(root, START, END, redis_url=ray_redis_url, views=["rides"], engine=engine)
        )
    )
    run.start()
    try:
        writer = wait_until(lambda: _task_process("ray::_write"), 60, 0.01, "a write task")
        os.kill(writer, signal.SIGKILL)
    finally:
        run.join(120)
    assert done, "the Ray materialize did not finish"
    assert done[0].entity_rows == local.entity_rows == many  # the 400 drivers among them
    assert _hashes(ray_redis_url) == _hashes(redis_url)


def _hashes(url: str) -> dict[bytes, dict[bytes, bytes]]:
    """Every hash in the Redis at `url`, pipelined (helpers.snapshot is one call per key)."""
    client = raw_redis(url)
    try:
        keys = list(client.scan_iter(count=5_000))
        found: dict[bytes, dict[bytes, bytes]] = {}
        for first in range(0, len(keys), 5_000):
            pipe = client.pipeline(transaction=False)
            for key in keys[first : first + 5_000]:
                pipe.hgetall(key)
            found.update(zip(keys[first : first + 5_000], pipe.execute(), strict=True))
        return found
    finally:
        client.close()


def _task_process(title: str) -> int | None:
    """The pid of a process whose title (Ray sets it to the running task) starts with
    `title`, or None."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(title.encode()):
                return int(proc.name)
    return None
