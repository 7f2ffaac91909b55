"""`carrara ingest`: a Redis Stream of push-source rows, through a consumer group, on a real
redis-server: at-least-once delivery with an exactly-once effect, dead letters with reasons."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from benchmarks.ingest import make_repo
from serving.cli import main
from serving.ingest.stream import StreamIngester, ingest
from serving.store import codec
from serving.store.redis_process import RedisProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STREAM = "zone_events"
NOW_US = int(datetime.now(UTC).timestamp()) * 1_000_000


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisProcess) -> Path:
    """benchmarks/ingest.py's repo: zone_supply (drivers Int64, ratio Float64) on the push
    source `supply`."""
    return make_repo(tmp_path_factory.mktemp("ingest"), redis_server.port)


@pytest.fixture
def client(redis_server: RedisProcess) -> Any:
    found = redis.Redis.from_url(redis_server.url)
    found.flushall()
    return found


def event(
    zone: int, drivers: int, seconds_ago: int, now_us: int = NOW_US, **extra: Any
) -> dict[bytes, bytes]:
    row = {"zone_id": zone, "drivers": drivers, "ratio": drivers / 10}
    row["event_timestamp"] = now_us - seconds_ago * 1_000_000
    return {b"source": b"supply", b"row": json.dumps({**row, **extra}).encode()}


def stored(client: Any, zone: int) -> tuple[int | None, int | None]:
    key = codec.encode_entity_key(["zone_id"], ["Int64"], [zone], "ingest_bench")
    drivers = client.hget(key, codec.field_name("zone_supply", "drivers"))
    ts = client.hget(key, codec.ts_field("zone_supply"))
    return codec.decode_value(drivers), codec.decode_timestamp_micros(ts)  # type: ignore[return-value]


def ingester(repo: Path, url: str, consumer: str = "a", **options: Any) -> StreamIngester:
    return ingest(repo, STREAM, url, consumer=consumer, **options)


def hashes(client: Any) -> dict[bytes, dict[bytes, bytes]]:
    """The feature hashes (not the stream) of the Redis."""
    return {key: client.hgetall(key) for key in client.scan_iter(_type="hash")}


def pending(client: Any) -> int:
    return int(client.xpending(STREAM, "carrara")["pending"])


def test_rows_are_written_acknowledged_and_bad_entries_dead_lettered(
    repo: Path, redis_server: RedisProcess, client: Any
) -> None:
    client.xadd(STREAM, event(1, 5, 60))
    client.xadd(STREAM, event(1, 7, 30))  # the same zone, later: wins
    client.xadd(STREAM, event(2, 3, 30))
    client.xadd(STREAM, {b"source": b"supply", b"row": b"{not json"})
    client.xadd(STREAM, event(3, 1, 30, surge=2))  # no such column
    client.xadd(STREAM, event(4, 1, -3600))  # an hour in the future
    client.xadd(STREAM, {b"row": b"{}"})  # no push source
    client.xadd(STREAM, {b"source": b"nope", b"row": b"{}"})
    stats = ingester(repo, redis_server.url).run(idle_exit=True)
    assert (stats.events, stats.written, stats.dead) == (8, 2, 5)
    assert stored(client, 1) == (7, NOW_US - 30_000_000)
    assert stored(client, 2)[0] == 3
    assert stored(client, 3) == (None, None)
    assert pending(client) == 0  # everything acknowledged, the dead after their burial
    dead = client.xrange(STREAM + ":dead")
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert len(reasons) == 5
    assert any("not JSON" in r for r in reasons)
    assert any("'surge' is not a column of push source 'supply'" in r for r in reasons)
    assert any("in the future" in r for r in reasons)
    assert any("names no push source" in r for r in reasons)
    assert any("no push source 'nope'" in r for r in reasons)
    assert all(b"id" in fields and b"field:row" in fields for _, fields in dead)


def test_a_crashed_ingester_resumes_and_a_redelivery_changes_nothing(
    repo: Path, redis_server: RedisProcess, client: Any
) -> None:
    for zone in range(10):
        client.xadd(STREAM, event(zone, zone + 1, 20))
    client.xgroup_create(STREAM, "carrara", id="0")
    taken = client.xreadgroup("carrara", "a", {STREAM: ">"}, count=4)  # then "crashed"
    assert len(taken[0][1]) == 4
    assert pending(client) == 4
    stats = ingester(repo, redis_server.url, "a").run(idle_exit=True)
    assert (stats.events, stats.written) == (10, 10)
    assert pending(client) == 0
    before = hashes(client)
    client.xgroup_setid(STREAM, "carrara", id="0")  # every entry delivered again
    again = ingester(repo, redis_server.url, "b").run(idle_exit=True)
    assert (again.events, again.written, again.older_than_stored) == (10, 0, 10)
    assert hashes(client) == before


def test_entries_a_dead_ingester_left_pending_are_claimed_by_another(
    repo: Path, redis_server: RedisProcess, client: Any
) -> None:
    for zone in range(3):
        client.xadd(STREAM, event(zone, 9, 10))
    client.xgroup_create(STREAM, "carrara", id="0")
    client.xreadgroup("carrara", "dead-one", {STREAM: ">"}, count=3)
    stats = ingester(repo, redis_server.url, "b", claim_idle_ms=0).run(idle_exit=True)
    assert (stats.events, stats.written) == (3, 3)
    assert pending(client) == 0
    assert [stored(client, zone)[0] for zone in range(3)] == [9, 9, 9]


def test_the_command_ingests_and_reports(
    repo: Path, redis_server: RedisProcess, client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client.xadd(STREAM, event(8, 2, 5))
    client.xadd(STREAM, {b"source": b"supply", b"row": b"[]"})
    args = ["ingest", "--repo", str(repo), "--stream", STREAM, "--idle-exit"]
    assert main([*args, "--redis-url", redis_server.url]) == 0
    out = capsys.readouterr().out
    assert "2 entries, 1 rows written, 0 older than stored, 1 to zone_events:dead" in out
    assert stored(client, 8)[0] == 2
    assert timedelta(microseconds=NOW_US - stored(client, 8)[1]) == timedelta(seconds=5)  # type: ignore[operator]


def test_a_group_lost_with_a_restarted_redis_is_made_again_and_nothing_counts_twice(
    repo: Path, redis_server: RedisProcess, client: Any
) -> None:
    for zone in range(3):
        client.xadd(STREAM, event(zone, 4, 20))
    ingesting = ingester(repo, redis_server.url)
    assert ingesting.run(idle_exit=True).written == 3
    client.xgroup_destroy(STREAM, "carrara")  # what a restart without persistence leaves
    client.xadd(STREAM, event(7, 6, 10))
    stats = ingesting.run(idle_exit=True)  # the same ingester: its group is gone
    assert (stats.events, stats.written, stats.older_than_stored) == (3 + 4, 4, 3)
    assert stored(client, 7)[0] == 6
    assert pending(client) == 0


def test_a_key_that_is_no_stream_is_one_line(
    repo: Path, redis_server: RedisProcess, client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client.set(STREAM, "a string")
    args = ["ingest", "--repo", str(repo), "--stream", STREAM, "--idle-exit"]
    assert main([*args, "--redis-url", redis_server.url]) == 1
    assert "ingest zone_events: cannot make group" in capsys.readouterr().err


def test_concurrent_offline_pushes_lose_no_row(repo: Path) -> None:
    """A one-file batch source is read, appended and replaced: pushes take turns."""
    import threading

    import pyarrow.parquet as pq

    from serving.ingest.push import Pusher, PushTarget
    from serving.repo.compile import ensure_plan

    source = repo / "data" / "supply.parquet"
    before = pq.read_table(source).num_rows
    pusher = Pusher(ensure_plan(repo), repo, store=None)
    rows = {"zone_id": [1] * 10, "drivers": [2] * 10, "ratio": [0.5] * 10}
    rows["event_timestamp"] = [NOW_US - 1_000_000] * 10
    threads = [
        threading.Thread(target=pusher.push, args=("supply", rows, PushTarget.OFFLINE))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert pq.read_table(source).num_rows == before + 80


def test_the_ingester_counts_and_measures_freshness_per_view(
    repo: Path, redis_server: RedisProcess, client: Any
) -> None:
    from serving.ingest.metrics import IngestMetrics

    now_us = int(time.time() * 1_000_000)  # not the module's: freshness is against the clock
    client.xadd(STREAM, event(1, 5, 30, now_us))
    client.xadd(STREAM, event(2, 5, 90, now_us))
    client.xadd(STREAM, {b"row": b"{}"})
    ingesting = ingester(repo, redis_server.url, metrics=IngestMetrics(STREAM))
    ingesting.run(idle_exit=True)
    assert ingesting.metrics is not None
    value = ingesting.metrics.registry.get_sample_value
    labels = {"stream": STREAM}
    assert value("carrara_ingest_events_total", labels) == 3
    assert value("carrara_ingest_rows_written_total", labels) == 2
    assert value("carrara_ingest_dead_letters_total", labels) == 1
    view = {"view": "zone_supply"}
    assert value("carrara_feature_freshness_seconds_count", view) == 2
    age = value("carrara_feature_freshness_seconds_sum", view)
    assert age is not None
    assert 120 <= age < 180  # 30 s + 90 s, and the time the test took


def test_the_command_serves_its_metrics_on_a_free_port(
    repo: Path, redis_server: RedisProcess, client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    client.xadd(STREAM, event(3, 1, 5))
    args = ["ingest", "--repo", str(repo), "--stream", STREAM, "--idle-exit"]
    assert main([*args, "--metrics-port", "0", "--redis-url", redis_server.url]) == 0
    out = capsys.readouterr().out
    assert f"ingest {STREAM}: metrics on http://127.0.0.1:" in out
    assert "1 rows written" in out
