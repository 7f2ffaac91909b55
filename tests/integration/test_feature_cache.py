"""The coherent feature cache against real redis-servers: the same answers as without it, a
write seen within the invalidation bound, and every way its invalidation channel can fail.

The bound asserted here (INVALIDATION_BOUND_S) is generous for a shared 2-core machine;
the measured delay is in benchmarks/README.md (python -m benchmarks.online).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.client import PredictionClient
from serving.online.server import Server, ServerSettings
from serving.ports import free_port
from serving.repo.plan import Column, FeatureServicePlan, FeatureViewPlan, Projection, ServingPlan
from serving.store import encoding, reads
from serving.store.feature_cache import LISTENER_NAME, FeatureCache
from serving.store.online_store import OnlineStore
from serving.store.read_plan import ReadPlan, build_read_plan
from serving.store.redis_process import private_cluster, private_redis
from serving.store.settings import RedisSettings, feast_settings
from serving.store.write_guard import RowBatch
from tests.helpers import RPC_TIMEOUT_S, SERVER_MAX_ROWS, raw_redis, wait_until

pytestmark = pytest.mark.integration

PROJECT = "cached"
INVALIDATION_BOUND_S = 1.0  # a write is seen by reads within this (measured: well under 1 ms)
NOW_US = 1_800_000_000 * 10**6
DRIVER = FeatureViewPlan(
    name="driver_stats",
    join_keys=(Column("driver_id", "Int64"),),
    features=(Column("rate", "Float64"), Column("trips", "Int64")),
    ttl_s=3600,
    source=None,
)
SERVICE = FeatureServicePlan(
    "svc", (Projection("driver_stats", "driver_stats", {}, ("rate", "trips")),)
)
PLAN = ServingPlan(PROJECT, "fp", {"driver_stats": DRIVER}, {}, {"svc": SERVICE})
READ_PLAN: ReadPlan = build_read_plan(PLAN, SERVICE.projections)
NOW_S = NOW_US / 1e6


def write(store: OnlineStore, ids: list[int], rate: float, ts_us: int = NOW_US) -> None:
    batch = RowBatch(
        encoding.encode_entity_keys(["driver_id"], ["Int64"], [ids], PROJECT),
        encoding.encode_timestamps(np.full(len(ids), ts_us, np.int64)),
        [
            encoding.encode_values("Float64", np.full(len(ids), rate)),
            encoding.encode_values("Int64", list(range(len(ids)))),
        ],
    )
    assert store.write_view("driver_stats", ["rate", "trips"], [batch]).written == len(ids)


def cached_store(settings: RedisSettings, entries: int = 1_000) -> OnlineStore:
    store = OnlineStore(settings, PROJECT, feature_cache_entries=entries)
    assert store.cache is not None
    cache = store.cache
    wait_until(lambda: cache.stats().live, 10, 0.01, "the feature cache subscribed")
    return store


def rate_of(store: OnlineStore, driver: int) -> float:
    return float(store.read(READ_PLAN, {"driver_id": [driver]}, now_s=NOW_S).values[0, 0])


@pytest.fixture
def stores(redis_url: str) -> Iterator[tuple[OnlineStore, OnlineStore]]:
    """(cached, uncached) over the same empty Redis."""
    plain = OnlineStore(RedisSettings(redis_url), PROJECT)
    cached = cached_store(RedisSettings(redis_url))
    yield cached, plain
    cached.close()
    plain.close()


def test_cached_reads_equal_redis_reads_missing_stale_and_all(
    stores: tuple[OnlineStore, OnlineStore],
) -> None:
    cached, plain = stores
    write(plain, [1, 2], 0.5)
    write(plain, [3], 0.7, ts_us=NOW_US - 2 * 3600 * 10**6)  # older than the 1 h ttl: STALE
    assert cached.cache is not None
    cache = cached.cache
    # the writes' own invalidations, applied before the first read (else they drop its entries)
    wait_until(lambda: cache.stats().invalidated_keys == 3, 5, 0.001, "the writes' invalidations")
    entities = {"driver_id": [1, 2, 3, 4, 1]}
    for now_s in (NOW_S, NOW_S, NOW_S + 3 * 3600):  # a hit ages like a miss: ttl stays exact
        ours, theirs = (
            cached.read(READ_PLAN, entities, now_s),
            plain.read(READ_PLAN, entities, now_s),
        )
        np.testing.assert_array_equal(ours.values, theirs.values)
        np.testing.assert_array_equal(ours.status, theirs.status)
        np.testing.assert_array_equal(ours.event_ts_us, theirs.event_ts_us)
        raw, raw_plain = (
            cached.read_raw(READ_PLAN, entities, now_s),
            plain.read_raw(READ_PLAN, entities, now_s),
        )
        assert raw.values == raw_plain.values
        np.testing.assert_array_equal(raw.status, raw_plain.status)
    assert cached.read(READ_PLAN, entities, NOW_S + 3 * 3600).missing_per_row.tolist() == [2] * 5
    stats = cache.stats()
    assert stats.misses == 4  # each distinct key once, the rest from memory
    assert stats.hits >= 4 * 6
    assert stats.entries == 4


def test_a_writer_racing_readers_is_seen_within_the_bound(
    stores: tuple[OnlineStore, OnlineStore],
) -> None:
    """Every write through writes.py is read back within the bound after it returns, by two
    threads reading the key through the cache all along (hits, then misses after each
    invalidation)."""
    cached, plain = stores
    write(plain, [1], 0.0)
    seen: list[float] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(rate_of(cached, 1))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    delays = []
    try:
        for value in range(1, 31):
            write(plain, [1], float(value), ts_us=NOW_US + value)
            written = time.perf_counter()
            wait_until(partial(_latest_at_least, seen, value), INVALIDATION_BOUND_S, 0.0005)
            delays.append(time.perf_counter() - written)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert cached.cache is not None
    assert cached.cache.stats().hits > 0
    assert max(delays) < INVALIDATION_BOUND_S
    assert rate_of(cached, 1) == 30.0


def _latest_at_least(seen: list[float], value: float) -> bool:
    return bool(seen) and seen[-1] >= value


class WriteDuringRead:
    """The real connection, with a write landing while a read's reply is on its way: the
    write and its invalidation happen after Redis answered the read, before the reply is
    handed to the cache."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self.write_next: Callable[[], None] | None = None

    @property
    def topology(self) -> int:
        return int(self._connection.topology)

    def invalidation_sources(self) -> Any:
        return self._connection.invalidation_sources()

    def exchange_keyed(self, keys: Any, commands: Any, timeout_s: float) -> list[Any]:
        replies: list[Any] = self._connection.exchange_keyed(keys, commands, timeout_s)
        write, self.write_next = self.write_next, None
        if write is not None:
            write()
        return replies


def test_a_reply_older_than_an_invalidation_never_enters_the_cache(redis_url: str) -> None:
    plain = OnlineStore(RedisSettings(redis_url), PROJECT)
    write(plain, [1], 1.0)
    racing = WriteDuringRead(plain.connection)
    cache = FeatureCache(racing, 100)
    try:
        wait_until(lambda: cache.stats().live, 10, 0.01, "the feature cache subscribed")

        def late_write() -> None:
            before = cache.stats().invalidated_keys
            write(plain, [1], 2.0, ts_us=NOW_US + 1)
            wait_until(lambda: cache.stats().invalidated_keys > before, 5, 0.001, "applied")

        racing.write_next = late_write
        entities = {"driver_id": [1]}
        assert reads.read(cache, READ_PLAN, entities, NOW_S).values[0, 0] == 1.0  # read first
        assert cache.stats().entries == 0  # its reply came after the invalidation: not kept
        assert reads.read(cache, READ_PLAN, entities, NOW_S).values[0, 0] == 2.0
        assert reads.read(cache, READ_PLAN, entities, NOW_S).values[0, 0] == 2.0  # a hit now
        assert cache.stats().hits == 1
    finally:
        cache.close()
        plain.close()


def listener_ids(url: str) -> list[int]:
    client = raw_redis(url)
    try:
        return [int(c["id"]) for c in client.client_list() if c["name"] == LISTENER_NAME.decode()]
    finally:
        client.close()


def test_a_killed_invalidation_connection_falls_back_then_recovers(
    stores: tuple[OnlineStore, OnlineStore], redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    cached, plain = stores
    assert cached.cache is not None
    cache = cached.cache
    write(plain, [1], 1.0)
    assert rate_of(cached, 1) == 1.0  # now cached
    (listener,) = listener_ids(redis_url)
    client = raw_redis(redis_url)
    with caplog.at_level(logging.WARNING, logger="serving.store.feature_cache"):
        client.client_kill_filter(_id=listener)
        wait_until(lambda: cache.stats().fallbacks == 1, 5, 0.01, "the outage counted")
        write(plain, [1], 2.0, ts_us=NOW_US + 1)  # while it may still be down: read from Redis
        assert rate_of(cached, 1) == 2.0
        wait_until(lambda: cache.stats().live and listener_ids(redis_url), 5, 0.01, "back")
    client.close()
    write(plain, [1], 3.0, ts_us=NOW_US + 2)
    wait_until(lambda: rate_of(cached, 1) == 3.0, INVALIDATION_BOUND_S, 0.001, "the new value")
    messages = [r.getMessage() for r in caplog.records]
    assert sum("feature cache off" in m for m in messages) == 1
    assert sum("subscribed again" in m for m in messages) == 1


def test_flushall_empties_the_cache(stores: tuple[OnlineStore, OnlineStore]) -> None:
    cached, plain = stores
    write(plain, [1], 1.0)
    assert rate_of(cached, 1) == 1.0
    client = raw_redis(plain.settings.url)
    client.flushall()
    client.close()
    wait_until(lambda: np.isnan(rate_of(cached, 1)), INVALIDATION_BOUND_S, 0.001, "gone")


def test_the_cache_holds_at_most_its_entries(redis_url: str) -> None:
    store = cached_store(RedisSettings(redis_url), entries=3)
    try:
        write(store, list(range(10)), 1.0)
        assert store.cache is not None
        cache = store.cache
        wait_until(lambda: cache.stats().invalidated_keys == 10, 5, 0.001, "the invalidations")
        store.read(READ_PLAN, {"driver_id": list(range(10))}, now_s=NOW_S)
        assert store.cache is not None
        assert store.cache.stats().entries == 3
        read = store.read(READ_PLAN, {"driver_id": [9, 8, 7]}, now_s=NOW_S)  # the last 3 read
        assert read.values[:, 0].tolist() == [1.0] * 3
        assert store.cache.stats().hits == 3
    finally:
        store.close()


def test_a_redis_refusing_tracking_is_read_directly_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    acl = ("--user", "default", "on", "nopass", "~*", "&*", "+@all", "-client|tracking")
    with (
        private_redis(tmp_path, extra_args=acl) as server,
        caplog.at_level(logging.WARNING, logger="serving.store.feature_cache"),
    ):
        store = OnlineStore(RedisSettings(server.url), PROJECT, feature_cache_entries=100)
        try:
            assert store.cache is not None
            cache = store.cache
            wait_until(lambda: cache.stats().fallbacks == 1, 5, 0.01, "the refusal counted")
            for value in (1.0, 2.0):  # never cached: each write is read at once
                write(store, [1], value, ts_us=NOW_US + int(value))
                assert rate_of(store, 1) == value
            assert cache.stats().hits == 0
            assert not cache.stats().live
        finally:
            store.close()
    refusals = [r.getMessage() for r in caplog.records if "feature cache off" in r.getMessage()]
    assert len(refusals) == 1, refusals
    assert "NOPERM" in refusals[0] or "client|tracking" in refusals[0]


def test_a_flood_of_invalidations_that_drops_the_listener_keeps_reads_correct(
    tmp_path: Path,
) -> None:
    """Redis disconnects a subscriber over its output buffer limit: during a big write the
    listener is dropped, the cache falls back and comes back, and no read is wrong."""
    with private_redis(tmp_path) as server:
        client = raw_redis(server.url)
        client.config_set("client-output-buffer-limit", "pubsub 2048 1024 1")
        store = cached_store(RedisSettings(server.url))
        try:
            ids = list(range(2_000))
            write(store, ids, 1.0)
            assert store.cache is not None
            cache = store.cache
            store.read(READ_PLAN, {"driver_id": ids[:50]}, now_s=NOW_S)
            write(store, ids, 2.0, ts_us=NOW_US + 1)  # 2,000 invalidations at once
            wait_until(lambda: cache.stats().fallbacks >= 1, 5, 0.01, "the listener dropped")
            wait_until(lambda: cache.stats().live, 5, 0.01, "the cache back")
            read = store.read(READ_PLAN, {"driver_id": ids[:50]}, now_s=NOW_S)
            assert read.values[:, 0].tolist() == [2.0] * 50
        finally:
            store.close()
            client.close()


def test_the_cache_on_a_cluster_follows_writes_on_every_master(tmp_path: Path) -> None:
    with private_cluster(tmp_path, masters=3, replicas=0) as cluster:
        settings = feast_settings(cluster.connection_string, "redis_cluster")
        store = cached_store(settings)
        try:
            ids = list(range(60))  # keys on every master
            write(store, ids, 1.0)
            assert store.cache is not None
            cache = store.cache
            wait_until(lambda: cache.stats().invalidated_keys == 60, 5, 0.001, "invalidations")
            for _round in range(2):  # Redis, then memory
                read = store.read(READ_PLAN, {"driver_id": ids}, now_s=NOW_S)
                assert read.values[:, 0].tolist() == [1.0] * 60
            assert (cache.stats().misses, cache.stats().hits) == (60, 60)
            assert len(listener_ids(f"redis://127.0.0.1:{cluster.nodes[0].port}/0")) == 1
            write(store, ids, 2.0, ts_us=NOW_US + 1)

            def all_new() -> bool:
                read = store.read(READ_PLAN, {"driver_id": ids}, now_s=NOW_S)
                return bool((read.values[:, 0] == 2.0).all())

            wait_until(all_new, INVALIDATION_BOUND_S, 0.001, "every master's invalidations")
        finally:
            store.close()


def test_the_cache_over_tls_follows_writes(tmp_path: Path) -> None:
    """The listener's socket is a TLS one (non-blocking reads of TLS records)."""
    tls = tmp_path / "tls"
    tls.mkdir()
    openssl = ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
    run = partial(subprocess.run, check=True, capture_output=True, timeout=60)
    run([*openssl, "-x509", "-subj", "/CN=ca", "-keyout", tls / "ca.key", "-out", tls / "ca.crt"])
    run([*openssl, "-subj", "/CN=127.0.0.1", "-keyout", tls / "s.key", "-out", tls / "s.csr"])
    (tls / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        [
            *("openssl", "x509", "-req", "-in", tls / "s.csr", "-CA", tls / "ca.crt"),
            *("-CAkey", tls / "ca.key", "-CAcreateserial", "-days", "2", "-extfile"),
            *(tls / "san.ext", "-out", tls / "s.crt"),
        ]
    )
    port = free_port()
    args = (
        *("--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no"),
        *("--tls-cert-file", str(tls / "s.crt"), "--tls-key-file", str(tls / "s.key")),
        *("--tls-ca-cert-file", str(tls / "ca.crt")),
    )
    server = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        settings = feast_settings(
            f"127.0.0.1:{port},ssl=true,ssl_ca_certs={tls / 'ca.crt'}", "redis"
        )
        wait_until(partial(_listening, port), 10, 0.02, "the TLS redis-server listens")
        store = cached_store(settings)
        try:
            assert store.cache is not None
            cache = store.cache
            write(store, [1], 1.0)
            wait_until(lambda: cache.stats().invalidated_keys == 1, 5, 0.001, "invalidation")
            assert [rate_of(store, 1), rate_of(store, 1)] == [1.0, 1.0]  # Redis, then memory
            write(store, [1], 2.0, ts_us=NOW_US + 1)
            wait_until(lambda: rate_of(store, 1) == 2.0, INVALIDATION_BOUND_S, 0.001, "new value")
            assert cache.stats().hits >= 1  # and one more if a read beat the invalidation
            assert cache.stats().fallbacks == 0
        finally:
            store.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- through the server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cached_server(server: Server) -> Iterator[Server]:
    """A second server over the `server` fixture's world and Redis, with the cache on."""
    settings = ServerSettings(
        repo=server.settings.repo,
        registry=server.settings.registry,
        port=0,
        redis_url=server.settings.redis_url,
        metrics_port=0,
        max_rows=SERVER_MAX_ROWS,
        feature_cache_entries=10_000,
    )
    cached = Server(settings)
    cached.start()
    assert cached.store.cache is not None
    cache = cached.store.cache
    wait_until(lambda: cache.stats().live, 10, 0.01, "the feature cache subscribed")
    yield cached
    cached.stop()


def predict_both(server: Server, cached_server: Server, **call: Any) -> tuple[Any, Any]:
    replies = []
    for target in (server, cached_server):
        with PredictionClient(f"127.0.0.1:{target.port}", timeout_s=RPC_TIMEOUT_S) as client:
            replies.append(client.predict(**call))
    return replies[0], replies[1]


def eta_call(drivers: list[int]) -> dict[str, Any]:
    n = len(drivers)
    return {
        "model": "eta",
        "entities": {
            "driver_id": drivers,
            "pickup_zone_id": [i % 16 for i in range(n)],
            "dropoff_zone_id": [(3 * i) % 16 for i in range(n)],
        },
        "request_data": {
            "pickup_lat": [44.06] * n,
            "pickup_lon": [10.11] * n,
            "dropoff_lat": [44.05] * n,
            "dropoff_lon": [10.06] * n,
            "request_ts_s": [int(time.time())] * n,
        },
        "return_features": True,
    }


@pytest.mark.slow  # the session's world and models, when no other test built them
def test_predict_and_online_features_are_identical_with_the_cache_on_and_off(
    server: Server, cached_server: Server
) -> None:
    call = eta_call([1, 2, 3, 99_999, 1, 250])  # 99_999: no such driver, its features missing
    for _round in range(3):  # a miss, then hits
        plain, cached = predict_both(server, cached_server, **call)
        assert list(cached.predictions) == list(plain.predictions)
        assert list(cached.missing_features) == list(plain.missing_features)
        np.testing.assert_array_equal(  # NaN where missing, in both
            [list(r.values) for r in cached.features], [list(r.values) for r in plain.features]
        )
    assert plain.missing_features[3] > 0
    pricing = {"model": "pricing", "entities": {"zone_id": [1, 2, 77]}}
    pricing["request_data"] = {"request_ts_s": [int(time.time())] * 3}
    plain, cached = predict_both(server, cached_server, **pricing)
    assert list(cached.predictions) == list(plain.predictions)
    assert list(cached.missing_features) == list(plain.missing_features)
    features = []
    for target in (server, cached_server):
        with PredictionClient(f"127.0.0.1:{target.port}", timeout_s=RPC_TIMEOUT_S) as client:
            features.append(
                client.online_features({"zone_id": [1, 2, 77]}, features=["zone_stats:surge_15m"])
            )
    assert features[0].SerializeToString() == features[1].SerializeToString()  # NaN too
    assert cached_server.store.cache is not None
    assert cached_server.store.cache.stats().hits > 0
    url = f"http://127.0.0.1:{cached_server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=RPC_TIMEOUT_S) as page:
        text = page.read().decode()
    for name in ("hits_total", "misses_total", "invalidations_total", "fallbacks_total"):
        assert f"carrara_feature_cache_{name}" in text
    assert "carrara_feature_cache_entries" in text


@pytest.mark.slow
def test_a_materialized_write_reaches_predict_within_the_bound(
    server: Server, cached_server: Server
) -> None:
    call = eta_call([5])
    _plain, before = predict_both(server, cached_server, **call)
    writer = OnlineStore(
        RedisSettings(str(server.settings.redis_url)), server.predictor.plan.project
    )
    try:
        ts = int(time.time() * 1e6)
        batch = RowBatch(
            encoding.encode_entity_keys(["driver_id"], ["Int64"], [[5]], writer.project),
            encoding.encode_timestamps(np.array([ts], np.int64)),
            [encoding.encode_values("Float32", np.array([0.123], np.float32))],
        )
        writer.write_view("driver_stats", ["acceptance_rate"], [batch])
    finally:
        writer.close()
    names = list(before.feature_names)
    at = names.index("driver_stats__acceptance_rate")

    def seen() -> bool:
        _p, reply = predict_both(server, cached_server, **call)
        return bool(abs(reply.features[0].values[at] - 0.123) < 1e-6)

    wait_until(seen, INVALIDATION_BOUND_S, 0.001, "the write through Predict")
    plain, cached = predict_both(server, cached_server, **call)
    assert list(cached.predictions) == list(plain.predictions)
