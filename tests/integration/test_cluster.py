"""Redis Cluster on every path: the same bytes as on one server and as Feast's, reads and guarded
writes routed by slot, MOVED followed, a master's failover survived with nothing lost.

A real local cluster (3 masters, 3 replicas, `redis-cli --cluster create`) on free loopback
ports, configured the Feast way (`redis_type: redis_cluster`, every node in the string).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis

from serving.batch.materialize import materialize
from serving.client import PredictionClient
from serving.errors import StoreUnavailableError
from serving.online.server import Server, ServerSettings
from serving.repo.compile import ensure_plan, feast_context
from serving.store import encoding
from serving.store.online_store import OnlineStore
from serving.store.read_plan import build_read_plan
from serving.store.redis_process import LocalCluster, private_cluster
from serving.store.settings import RedisSettings, feast_settings
from serving.store.write_guard import RowBatch
from tests.helpers import WORLD_END, Snapshot, snapshot, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT = "clustered"
START, END = WORLD_END - timedelta(hours=30), WORLD_END


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with private_cluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


def flush(cluster: LocalCluster) -> None:
    for node in cluster.masters():
        client = redis.Redis(port=node.port)
        client.flushall()
        client.close()


def cluster_snapshot(cluster: LocalCluster) -> Snapshot:
    state: Snapshot = {}
    for node in cluster.masters():
        state.update(snapshot(f"redis://127.0.0.1:{node.port}/0"))
    return state


def cluster_settings(cluster: LocalCluster) -> RedisSettings:
    return feast_settings(cluster.connection_string, "redis_cluster")


@pytest.fixture
def cluster_repo(applied_repo: Path, tmp_path: Path, cluster: LocalCluster) -> Path:
    """The sample repo, its online store the cluster, configured as Feast configures one."""
    repo = Path(shutil.copytree(applied_repo, tmp_path / "feature_repo"))
    cluster.configure_repo(repo)
    flush(cluster)
    return repo


def test_guarded_writes_and_reads_route_every_key_to_its_master(cluster: LocalCluster) -> None:
    flush(cluster)
    store = OnlineStore(cluster_settings(cluster), PROJECT)
    n = 500
    keys = encoding.encode_entity_keys(["driver_id"], ["Int64"], [list(range(n))], PROJECT)
    micros = np.full(n, 1_700_000_000 * 10**6)
    rows = RowBatch(
        keys, encoding.encode_timestamps(micros), [encoding.encode_values("Int64", range(n))]
    )
    try:
        assert store.write_view("v", ["trips"], [rows]).written == n
        older = RowBatch(keys, encoding.encode_timestamps(micros - 1), rows.values)
        assert store.write_view("v", ["trips"], [older]).skipped == n  # the guard, per key
        assert set(cluster_snapshot(cluster)) == set(keys)
        assert all(len(snapshot(f"redis://127.0.0.1:{m.port}/0")) > 50 for m in cluster.masters())
    finally:
        store.close()


def test_materialize_into_a_cluster_writes_the_single_server_bytes(
    cluster_repo: Path, cluster: LocalCluster, applied_repo: Path, tmp_path: Path, redis_url: str
) -> None:
    single = Path(shutil.copytree(applied_repo, tmp_path / "single"))
    materialize(single, redis_url=redis_url, start=START, end=END)
    report = materialize(cluster_repo, start=START, end=END)
    assert report.written > 300
    assert cluster_snapshot(cluster) == snapshot(redis_url)


def test_feast_and_carrara_write_and_read_the_same_cluster_bytes(
    cluster_repo: Path, cluster: LocalCluster
) -> None:
    materialize(cluster_repo, start=START, end=END)
    by_carrara = cluster_snapshot(cluster)
    with feast_context(cluster_repo):
        from feast import FeatureStore

        feast = FeatureStore(repo_path=str(cluster_repo))
        rows = [{"driver_id": d} for d in (1, 2, 3, 299, 100_000)]
        refs = ["driver_stats:acceptance_rate", "driver_stats:trips_today"]
        by_feast = feast.get_online_features(features=refs, entity_rows=rows).to_dict()
        flush(cluster)
        # Feast 0.67's local engine refuses time-window aggregations: its batch views only
        plan = ensure_plan(cluster_repo)
        feast.materialize(
            START, END, [v.name for v in plan.feature_views.values() if not v.windowed]
        )
    assert cluster_snapshot(cluster) == by_carrara  # Feast on the cluster: the same bytes
    plan = ensure_plan(cluster_repo)  # Feast recorded its run: the plan recompiles
    projection = next(
        p for p in plan.feature_service("eta_v1").projections if p.view == "driver_stats"
    )
    read_plan = build_read_plan(plan, [projection])
    store = OnlineStore(cluster_settings(cluster), plan.project)
    try:
        read = store.read_raw(read_plan, {"driver_id": [r["driver_id"] for r in rows]})
    finally:
        store.close()
    for name in ("acceptance_rate", "trips_today"):
        ours = read.values[read_plan.feature_names.index(f"driver_stats__{name}")]
        theirs = by_feast[name]
        assert theirs[-1] is None  # an unknown driver, both ways
        assert ours[-1] is None
        np.testing.assert_allclose(
            np.array([np.nan if v is None else v for v in ours], dtype=np.float64),
            np.array([np.nan if v is None else v for v in theirs], dtype=np.float64),
            rtol=1e-6,
        )


def test_server_on_a_cluster_survives_a_master_failover(
    cluster_repo: Path, cluster: LocalCluster, trained_registry: Path
) -> None:
    materialize(cluster_repo, start=START, end=END)
    before = cluster_snapshot(cluster)
    server = Server(ServerSettings(repo=cluster_repo, registry=trained_registry, port=0))
    server.start()
    zones = list(range(16))
    # windowed views are kept on one Redis server only: on a cluster they are always missing
    plan = ensure_plan(cluster_repo)
    windowed = sum(len(v.features) for v in plan.feature_views.values() if v.windowed)
    try:
        with PredictionClient(f"127.0.0.1:{server.port}", timeout_s=5) as client:

            def predict() -> list[int]:
                reply = client.predict("pricing", {"zone_id": zones}, {"request_ts_s": [0] * 16})
                return list(reply.missing_features)

            assert predict() == [windowed] * 16  # every zone's key found, on whichever master
            victim = cluster.masters()[0]
            victim.stop()

            codes = []

            def answers() -> bool:
                try:
                    return predict() == [windowed] * 16
                except grpc.RpcError as exc:
                    codes.append(exc.code())
                    return False

            wait_until(answers, timeout_s=60, what="the server answers after the failover")
            assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}  # the gap, and nothing else
    finally:
        server.stop()
    cluster.nodes[cluster.nodes.index(victim)].start()  # back, as a replica
    cluster.wait_until_ok()
    assert cluster_snapshot(cluster) == before  # nothing lost, nothing overwritten


def test_a_cluster_nobody_serves_is_unavailable_naming_the_nodes() -> None:
    from serving.ports import free_port

    settings = feast_settings(f"127.0.0.1:{free_port()}", "redis_cluster")
    store = OnlineStore(settings, PROJECT)  # a server still starts, and says so per request
    with pytest.raises(StoreUnavailableError, match=r"Redis cluster 127\.0\.0\.1:\d+"):
        store.ping()
    store.close()


def test_one_start_up_node_down_is_no_trouble(cluster: LocalCluster) -> None:
    from serving.ports import free_port

    nodes = f"127.0.0.1:{free_port()},{cluster.connection_string}"
    store = OnlineStore(feast_settings(nodes, "redis_cluster"), PROJECT)
    try:
        store.ping()
    finally:
        store.close()


def test_an_error_reply_on_a_cluster_is_the_store_s_error_not_a_raw_one(
    cluster: LocalCluster,
) -> None:
    flush(cluster)
    store = OnlineStore(cluster_settings(cluster), PROJECT)
    key = b"not-a-hash"
    try:
        redis.RedisCluster(host="127.0.0.1", port=cluster.masters()[0].port).set(key, b"x")
        hget = b"*3\r\n$4\r\nHGET\r\n$%d\r\n%s\r\n$1\r\nf\r\n" % (len(key), key)
        with pytest.raises(StoreUnavailableError, match="WRONGTYPE"):
            store.connection.exchange_keyed([key], [hget], 1.0)
    finally:
        store.close()


def test_a_push_to_windowed_views_on_a_cluster_is_refused_saying_why(
    cluster_repo: Path, cluster: LocalCluster, trained_registry: Path
) -> None:
    server = Server(ServerSettings(repo=cluster_repo, registry=trained_registry, port=0))
    server.start()
    now_us = int(time.time() * 1e6)
    event = {"zone_id": [1], "trip_requested": [1], "driver_available": [0]}
    try:
        with (
            PredictionClient(f"127.0.0.1:{server.port}", timeout_s=5) as client,
            pytest.raises(grpc.RpcError) as refused,
        ):
            client.push("zone_events", {**event, "event_timestamp": [now_us]})
    finally:
        server.stop()
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "one Redis server, not a Redis Cluster" in str(refused.value.details())
