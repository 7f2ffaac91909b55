"""Windowed views online, on a real redis-server: pushed and streamed events kept in tiles,
the windows' values in Feast's layout (Feast reads them), aged by ticks, and exactly once
however often a stream entry is delivered; checked against the definition in
serving/repo/windows.py, recounted from the events in the test."""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from serving.client import python_values
from serving.errors import InvalidRequestError
from serving.ingest.push import Pusher
from serving.ingest.stream import ingest
from serving.ingest.windows import StreamAck
from serving.repo.compile import apply_repo, feast_context
from serving.repo.plan import FeatureViewPlan, ServingPlan
from serving.repo.windows import window_tiles
from serving.store import codec
from serving.store.online_store import OnlineStore
from serving.store.redis_process import RedisProcess, private_redis
from serving.store.settings import redis_settings
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT = "windows_test"
VIEW = "zone_activity"
STREAM = "zone_events_stream"
HOP_S = 10
DEFINITIONS = """
from datetime import timedelta

from feast import Entity, Field, FileSource, PushSource
from feast.aggregation import Aggregation
from feast.stream_feature_view import StreamFeatureView
from feast.types import Float32, Float64, Int32, Int64
from feast.value_type import ValueType

zone = Entity(name="zone", join_keys=["zone_id"], value_type=ValueType.INT64)
events = PushSource(
    name="zone_events",
    batch_source=FileSource(path="data/zone_events.parquet", timestamp_field="event_timestamp"),
)
aggregations = [
    Aggregation(column="trips", function="sum", time_window=timedelta(seconds=60)),
    Aggregation(column="trips", function="sum", time_window=timedelta(seconds=300)),
    Aggregation(column="trips", function="count", time_window=timedelta(seconds=300)),
    Aggregation(column="fare", function="mean", time_window=timedelta(seconds=60)),
    Aggregation(column="fare", function="min", time_window=timedelta(seconds=300)),
    Aggregation(column="fare", function="max", time_window=timedelta(seconds=300)),
    Aggregation(column="fare", function="sum", time_window=timedelta(seconds=300)),
]
zone_activity = StreamFeatureView(
    name="zone_activity",
    entities=[zone],
    ttl=timedelta(minutes=30),
    source=events,
    schema=[Field(name="zone_id", dtype=Int64), Field(name="trips", dtype=Int64),
            Field(name="fare", dtype=Float64)]
    + [Field(name=a.resolved_name(a.time_window), dtype=Int64 if "trips" in a.column else Float64)
       for a in aggregations],
    aggregations=aggregations,
    timestamp_field="event_timestamp",
    enable_tiling=True,
    tiling_hop_size=timedelta(seconds=10),
)
# a day-long window over 10 s tiles: 8,640 tiles, more than one Lua call can unpack
day_events = PushSource(
    name="day_events",
    batch_source=FileSource(path="data/zone_events.parquet", timestamp_field="event_timestamp"),
)
day = StreamFeatureView(
    name="day",
    entities=[zone],
    ttl=timedelta(days=2),
    source=day_events,
    schema=[Field(name="zone_id", dtype=Int64), Field(name="fare", dtype=Float64),
            Field(name="sum_fare_86400s", dtype=Float64)],
    aggregations=[Aggregation(column="fare", function="sum", time_window=timedelta(days=1))],
    timestamp_field="event_timestamp",
    enable_tiling=True,
    tiling_hop_size=timedelta(seconds=10),
)
# narrower outputs and negative numbers: Int32 and Int64 varints, Float32
signed_events = PushSource(
    name="signed_events",
    batch_source=FileSource(path="data/zone_events.parquet", timestamp_field="event_timestamp"),
)
signed = StreamFeatureView(
    name="signed",
    entities=[zone],
    ttl=timedelta(minutes=30),
    source=signed_events,
    schema=[Field(name="zone_id", dtype=Int64), Field(name="trips", dtype=Int64),
            Field(name="trips_i32", dtype=Int32), Field(name="low_fare_f32", dtype=Float32),
            Field(name="fare_i64", dtype=Int64)],
    aggregations=[
        Aggregation(column="trips", function="sum", time_window=timedelta(seconds=60),
                    name="trips_i32"),
        Aggregation(column="fare", function="min", time_window=timedelta(seconds=60),
                    name="low_fare_f32"),
        Aggregation(column="fare", function="sum", time_window=timedelta(seconds=60),
                    name="fare_i64"),
    ],
    timestamp_field="event_timestamp",
)
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisProcess) -> Path:
    repo = tmp_path_factory.mktemp("windows") / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "definitions.py").write_text(DEFINITIONS)
    (repo / "feature_store.yaml").write_text(
        f"project: {PROJECT}\nregistry: data/registry.db\nprovider: local\n"
        "online_store:\n    type: redis\n"
        f'    connection_string: "127.0.0.1:{redis_server.port}"\n'
    )
    empty = {
        "zone_id": pa.array([], pa.int64()),
        "trips": pa.array([], pa.int64()),
        "fare": pa.array([], pa.float64()),
        "event_timestamp": pa.array([], pa.timestamp("us", "UTC")),
    }
    pq.write_table(pa.table(empty), repo / "data" / "zone_events.parquet")
    apply_repo(repo)
    return repo


@pytest.fixture
def plan(repo: Path) -> ServingPlan:
    from serving.repo.compile import ensure_plan

    return ensure_plan(repo)


@pytest.fixture
def client(redis_url: str) -> Any:
    found = redis.Redis.from_url(redis_url)
    yield found
    found.close()


@pytest.fixture
def store(repo: Path, redis_url: str, plan: ServingPlan) -> Any:
    opened = OnlineStore(redis_settings(repo, redis_url), plan.project)
    yield opened
    opened.close()


Event = tuple[int, int, int | None, float | None]  # zone, event time (us), trips, fare


def random_events(rng: random.Random, now_us: int, n: int) -> list[Event]:
    """Events of 4 zones over the last 10 minutes, out of order, some values null."""
    return [
        (
            rng.randrange(4),
            now_us - rng.randrange(600_000_000),
            None if rng.random() < 0.1 else rng.randrange(3),
            None if rng.random() < 0.1 else round(rng.uniform(3, 40), 2),
        )
        for _ in range(n)
    ]


def columns(events: Sequence[Event]) -> dict[str, list[Any]]:
    return {
        "zone_id": [e[0] for e in events],
        "event_timestamp": [e[1] for e in events],
        "trips": [e[2] for e in events],
        "fare": [e[3] for e in events],
    }


def expected(view: FeatureViewPlan, events: Sequence[Event], zone: int, as_of_us: int) -> dict:
    """serving/repo/windows.py's definition, event by event."""
    out = {}
    for agg in view.aggregations:
        first, last = window_tiles(as_of_us, view.hop_s, agg.window_s)
        index = 2 if agg.column == "trips" else 3
        values: list[float] = [
            e[index]  # type: ignore[misc]
            for e in events
            if e[0] == zone
            and e[1] <= as_of_us
            and first <= e[1] // (view.hop_s * 1_000_000) <= last
            and e[index] is not None
        ]
        out[agg.name] = {
            "sum": sum(values),
            "count": len(values),
            "mean": sum(values) / len(values) if values else None,
            "min": min(values, default=None),
            "max": max(values, default=None),
        }[agg.function]
    return out


def stored(client: Any, view: FeatureViewPlan, zone: int) -> tuple[dict, int | None]:
    key = codec.encode_entity_key(["zone_id"], ["Int64"], [zone], PROJECT)
    fields = client.hgetall(key)
    values = {
        f.name: codec.decode_value(fields.get(codec.field_name(VIEW, f.name)))
        for f in view.features
    }
    return values, codec.decode_timestamp_micros(fields.get(codec.ts_field(VIEW)))


def assert_matches(client: Any, view: FeatureViewPlan, events: Sequence[Event]) -> None:
    for zone in sorted({e[0] for e in events}):
        values, as_of = stored(client, view, zone)
        assert as_of is not None
        want = expected(view, events, zone, as_of)
        for name, value in want.items():
            got = values[name]
            if isinstance(value, float) and got is not None:
                assert math.isclose(got, value, rel_tol=1e-9), (zone, name, got, value)
            else:
                assert got == value, (zone, name, got, value)


def test_pushed_events_in_batches_give_the_defined_windows(
    repo: Path, plan: ServingPlan, store: Any, client: Any
) -> None:
    view = plan.feature_views[VIEW]
    assert view.hop_s == HOP_S
    assert view.windowed
    now_us = int(time.time() * 1e6)
    rng = random.Random(5)
    pusher = Pusher(plan, repo, store)
    pushed: list[Event] = []
    for size in (1, 7, 50, 1_200):  # late and out-of-order events; 1,200: several calls
        batch = random_events(rng, now_us, size)
        result = pusher.push("zone_events", columns(batch))
        assert (result.rows_written, result.rows_older_than_stored) == (size, 0)
        pushed += batch
        assert_matches(client, view, pushed)


def test_feast_reads_the_windows_carrara_keeps(
    repo: Path, plan: ServingPlan, store: Any, client: Any
) -> None:
    view = plan.feature_views[VIEW]
    events = random_events(random.Random(9), int(time.time() * 1e6), 100)
    Pusher(plan, repo, store).push("zone_events", columns(events))
    names = [f.name for f in view.features]
    with feast_context(repo):
        from feast import FeatureStore

        feast = FeatureStore(repo_path=str(repo))
        read = feast.get_online_features(
            features=[f"{VIEW}:{n}" for n in names], entity_rows=[{"zone_id": z} for z in range(4)]
        ).to_dict()
    for zone in range(4):
        ours, _ = stored(client, view, zone)
        assert {n: read[n][zone] for n in names} == ours


def test_a_tick_ages_quiet_windows_and_forgets_empty_ones(
    repo: Path, plan: ServingPlan, store: Any, client: Any
) -> None:
    view = plan.feature_views[VIEW]
    now_s = 1_900_000_000.0
    pusher = Pusher(plan, repo, store)
    writer = pusher.windows()
    writer.clock = lambda: now_s
    events: list[Event] = [
        (1, int((now_s - 30) * 1e6), 2, 10.0),
        (1, int((now_s - 200) * 1e6), 1, 4.0),
    ]
    pusher.push("zone_events", columns(events), now_s=now_s)
    assert stored(client, view, 1)[0]["sum_trips_60s"] == 2
    active = view_active_key(plan)
    assert client.zcard(active) == 1
    newest_tile = int(now_s - 30) // HOP_S  # the newest event's tile
    emptied_us = (newest_tile + 300 // HOP_S) * HOP_S * 1_000_000  # + the longest window
    for later_s in (45, 150, 400):  # the 60 s window empties, then the 300 s ones
        writer.clock = lambda later_s=later_s: now_s + later_s  # type: ignore[misc]
        assert writer.tick([view]) == 1
        values, as_of = stored(client, view, 1)
        assert as_of == min(int((now_s + later_s) * 1e6), emptied_us)
        assert values == expected(view, events, 1, as_of)
    assert as_of == emptied_us  # empty windows are valid from when they emptied: ttl from then
    assert values["sum_trips_300s"] == 0
    assert values["min_fare_300s"] is None
    assert client.zcard(active) == 0  # every window empty: nothing left to age
    assert writer.tick([view]) == 0


def view_active_key(plan: ServingPlan) -> bytes:
    return f"carrara:active:{plan.project}:{VIEW}".encode()


def test_a_stream_entry_delivered_twice_counts_once(
    repo: Path, plan: ServingPlan, store: Any, client: Any
) -> None:
    view = plan.feature_views[VIEW]
    events = random_events(random.Random(3), int(time.time() * 1e6), 30)
    for _e in events:
        client.xadd(STREAM, {b"row": b"{}"})  # the ids the events travel under
    client.xgroup_create(STREAM, "g", id="0")
    taken = client.xreadgroup("g", "a", {STREAM: ">"}, count=100)[0][1]
    ids = [entry_id for entry_id, _ in taken]
    pusher = Pusher(plan, repo, store)
    ack = StreamAck(STREAM.encode(), b"g", b"a", ids)
    first = pusher.push("zone_events", columns(events), ack=ack)
    assert (first.rows_written, first.rows_older_than_stored) == (30, 0)
    assert client.xpending(STREAM, "g")["pending"] == 0  # acknowledged with the effect
    before = {z: stored(client, view, z)[0] for z in range(4)}
    again = pusher.push("zone_events", columns(events), ack=ack)  # a redelivery
    assert (again.rows_written, again.rows_older_than_stored) == (0, 30)
    assert {z: stored(client, view, z)[0] for z in range(4)} == before
    assert_matches(client, view, events)


def test_bad_event_values_are_refused_naming_column_and_row(
    repo: Path, plan: ServingPlan, store: Any, client: Any
) -> None:
    events = columns([(1, int(time.time() * 1e6), 1, 2.0)] * 2)
    events["fare"][1] = "cheap"
    with pytest.raises(InvalidRequestError, match=r"columns.fare row 1: .*numbers"):
        Pusher(plan, repo, store).push("zone_events", events)
    assert client.dbsize() == 0  # nothing written


def test_an_ingester_killed_mid_stream_loses_and_doubles_nothing(
    repo: Path, plan: ServingPlan, client: Any, redis_url: str
) -> None:
    view = plan.feature_views[VIEW]
    events = random_events(random.Random(11), int(time.time() * 1e6), 6_000)
    pipe = client.pipeline(transaction=False)
    for zone, ts, trips, fare in events:
        row = {"zone_id": zone, "event_timestamp": ts, "trips": trips, "fare": fare}
        pipe.xadd(STREAM, {b"source": b"zone_events", b"row": json.dumps(row).encode()})
    pipe.execute()
    command = [sys.executable, "-m", "serving.cli", "ingest", "--repo", str(repo)]
    command += ["--stream", STREAM, "--redis-url", redis_url, "--batch", "50"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: acknowledged(client) >= 1_000, 60, what="1,000 entries ingested")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert acknowledged(client) < len(events)  # killed with work left
    stats = ingest(repo, STREAM, redis_url, consumer="b", claim_idle_ms=0).run(idle_exit=True)
    assert stats.dead == 0
    assert client.xpending(STREAM, "carrara")["pending"] == 0
    assert_matches(client, view, events)


def acknowledged(client: Any) -> int:
    """Entries the group has read and no consumer holds pending."""
    groups = client.xinfo_groups(STREAM)
    if not groups:
        return 0
    return int(groups[0]["entries-read"] or 0) - int(groups[0]["pending"])


def test_ageing_ticks_once_per_tile_until_stopped(
    repo: Path, plan: ServingPlan, store: Any, client: Any
) -> None:
    view = plan.feature_views[VIEW]
    start_s = 1_950_000_000.0
    pusher = Pusher(plan, repo, store)
    writer = pusher.windows()
    writer.clock = lambda: start_s
    pusher.push("zone_events", columns([(2, int((start_s - 5) * 1e6), 3, 7.0)]), now_s=start_s)
    stop = threading.Event()
    calls: list[float] = []

    def clock() -> float:  # each call a tile later, just before its end: short waits
        calls.append(start_s + HOP_S * len(calls) + HOP_S - 0.001)
        if len(calls) >= 80:
            stop.set()
        return calls[-1]

    writer.clock = clock
    writer.age([view], stop)
    values, as_of = stored(client, view, 2)
    assert as_of is not None
    emptied_s = (int(start_s - 5) // HOP_S + 300 // HOP_S) * HOP_S  # the event's tile + 300 s
    assert as_of == emptied_s * 1_000_000  # aged past every window, stamped when they emptied
    assert values["sum_trips_300s"] == 0
    assert client.zcard(view_active_key(plan)) == 0


def test_the_push_rpc_feeds_windows_that_get_online_features_serves(
    repo: Path, plan: ServingPlan, client: Any, redis_url: str, tmp_path: Path
) -> None:
    from serving.client import PredictionClient
    from serving.online.server import Server, ServerSettings

    view = plan.feature_views[VIEW]
    now_us = int(time.time() * 1e6)
    events = [(1, now_us - 2_000_000, 2, 10.5), (1, now_us - 1_000_000, 1, 3.0)]
    settings = ServerSettings(repo=repo, registry=tmp_path / "models", port=0, redis_url=redis_url)
    server = Server(settings)
    server.start()
    try:
        with PredictionClient(f"127.0.0.1:{server.port}", timeout_s=30) as rpc:
            reply = rpc.push("zone_events", columns(events))
            assert (reply.rows_written, reply.rows_older_than_stored) == (2, 0)
            refs = [f"{VIEW}:{f.name}" for f in view.features]
            served = rpc.online_features({"zone_id": [1]}, features=refs)
    finally:
        server.stop()
    values, as_of = stored(client, view, 1)
    assert values["sum_trips_60s"] == 3
    assert values["mean_fare_60s"] == pytest.approx(6.75)
    by_name = {c.name: c for c in served.features}
    assert {n.split("__")[-1]: python_values(by_name[n])[0] for n in by_name} == values
    assert all(c.event_timestamps_us[0] == as_of for c in served.features)  # its age


def test_events_from_beyond_the_allowed_skew_are_dead_lettered_with_the_reason(
    repo: Path, plan: ServingPlan, client: Any, redis_url: str
) -> None:
    now_us = int(time.time() * 1e6)
    for zone, ahead_s in ((1, 1), (2, 3_600)):
        row = {"zone_id": zone, "event_timestamp": now_us + ahead_s * 1_000_000, "trips": 1}
        client.xadd(STREAM, {b"source": b"zone_events", b"row": json.dumps(row).encode()})
    ingester = ingest(repo, STREAM, redis_url, consumer="a")
    ingester.pusher.max_future_skew_s = 60
    stats = ingester.run(idle_exit=True)
    assert (stats.events, stats.written, stats.dead) == (2, 1, 1)
    [(_, dead)] = client.xrange(STREAM + ":dead")
    assert b"more than 60 s in the future" in dead[b"reason"]
    assert stored(client, plan.feature_views[VIEW], 1)[0]["sum_trips_60s"] == 1


def test_redis_killed_and_restarted_mid_stream_loses_and_doubles_nothing(
    repo: Path, plan: ServingPlan, tmp_path: Path
) -> None:
    """With the AOF on (fsync always), a Redis killed mid-stream comes back with its stream,
    group and tiles as of its last reply; the ingester waits it out and carries on."""
    view = plan.feature_views[VIEW]
    events = random_events(random.Random(13), int(time.time() * 1e6), 4_000)
    durable = ["--appendonly", "yes", "--appendfsync", "always"]
    with private_redis(tmp_path / "redis", extra_args=durable) as server:
        own: Any = redis.Redis.from_url(server.url)
        pipe = own.pipeline(transaction=False)
        for zone, ts, trips, fare in events:
            row = {"zone_id": zone, "event_timestamp": ts, "trips": trips, "fare": fare}
            pipe.xadd(STREAM, {b"source": b"zone_events", b"row": json.dumps(row).encode()})
        pipe.execute()
        ingester = ingest(repo, STREAM, server.url, consumer="a", batch=50)
        done: list[Any] = []
        worker = threading.Thread(target=lambda: done.append(ingester.run(idle_exit=True)))
        worker.start()
        try:
            wait_until(lambda: acknowledged(own) >= 800, 60, what="800 entries ingested")
            assert server.process is not None
            server.process.kill()  # SIGKILL: no shutdown save, the AOF is what is left
            server.process.wait(timeout=30)
            server.start()
            worker.join(timeout=120)
        finally:
            ingester.stop.set()
            worker.join(timeout=30)
        assert done, "the ingester did not finish"
        assert done[0].reconnects > 0
        assert own.xpending(STREAM, "carrara")["pending"] == 0
        assert acknowledged(own) == len(events)
        assert_matches(own, view, events)
        own.close()


def test_negative_numbers_and_narrow_types_read_back_through_feast(
    repo: Path, plan: ServingPlan, store: Any
) -> None:
    now_us = int(time.time() * 1e6)
    events: list[Event] = [(5, now_us - 1_000_000, -3, -2.5), (5, now_us - 2_000_000, -40, 0.1)]
    Pusher(plan, repo, store).push("signed_events", columns(events))
    names = ["trips_i32", "low_fare_f32", "fare_i64"]
    with feast_context(repo):
        from feast import FeatureStore

        feast = FeatureStore(repo_path=str(repo))
        read = feast.get_online_features(
            features=[f"signed:{n}" for n in names], entity_rows=[{"zone_id": 5}]
        ).to_dict()
    assert read["trips_i32"] == [-43]
    assert read["low_fare_f32"] == [pytest.approx(-2.5)]
    assert read["fare_i64"] == [-2]  # -2.4 written as an integer: truncated toward zero


def test_float_sums_do_not_drift_as_tiles_leave_the_window(
    repo: Path, plan: ServingPlan, store: Any, client: Any
) -> None:
    view = plan.feature_views[VIEW]
    start_s = 1_960_000_000.0
    pusher = Pusher(plan, repo, store)
    writer = pusher.windows()
    events: list[Event] = [
        (6, int(start_s * 1e6), None, 0.1),
        (6, int((start_s + 10) * 1e6), None, 0.2),
        (6, int((start_s + 250) * 1e6), 1, None),  # keeps the windows open, adds no fare
    ]
    for i, event in enumerate(events):
        writer.clock = lambda at=event[1]: at / 1e6  # type: ignore[misc]
        pusher.push("zone_events", columns(events[i : i + 1]), now_s=start_s + 300)
    for later_s in (300, 310):  # 0.1 leaves the 300 s window, then 0.2: one tile each
        writer.clock = lambda later_s=later_s: start_s + later_s  # type: ignore[misc]
        writer.tick([view])
    values, as_of = stored(client, view, 6)
    assert as_of == int((start_s + 310) * 1e6)
    assert values["sum_fare_300s"] == 0.0  # exactly: not 0.1 + 0.2 - 0.1 - 0.2 = 2.8e-17
    assert values == expected(view, events, 6, as_of)


def test_an_old_event_of_a_new_entity_is_stamped_when_its_windows_emptied(
    repo: Path, plan: ServingPlan, store: Any, client: Any
) -> None:
    view = plan.feature_views[VIEW]
    old_us = int((time.time() - 7_200) * 1e6)  # 2 h ago: ttl 30 min + 5 min window ago
    Pusher(plan, repo, store).push("zone_events", columns([(8, old_us, 1, 5.0)]))
    values, as_of = stored(client, view, 8)
    emptied_us = (old_us // (HOP_S * 1_000_000) + 300 // HOP_S) * HOP_S * 1_000_000
    assert as_of == emptied_us  # older than the ttl: served as stale (missing), as offline
    assert values["sum_trips_300s"] == 0
    assert client.zcard(view_active_key(plan)) == 0


def test_a_day_long_window_moved_by_most_of_a_day_is_one_call(
    repo: Path, plan: ServingPlan, store: Any, client: Any
) -> None:
    view = plan.feature_views["day"]
    start_s = 1_970_000_000.0
    pusher = Pusher(plan, repo, store)
    writer = pusher.windows()
    writer.clock = lambda: start_s
    pushed = columns([(4, int(start_s * 1e6), 1, 2.5)])
    del pushed["trips"]  # not a column of day_events
    pusher.push("day_events", pushed, now_s=start_s)
    writer.clock = lambda: start_s + 20 * 3_600  # 7,200 tiles on: 14,400 tile fields dropped
    assert writer.tick([view]) == 1
    key = codec.encode_entity_key(["zone_id"], ["Int64"], [4], PROJECT)
    raw = client.hget(key, codec.field_name("day", "sum_fare_86400s"))
    assert codec.decode_value(raw) == 2.5
