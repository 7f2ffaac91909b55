"""The online store against a real redis-server: Feast's write guard, reads, TTLs, outages."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.errors import InvalidRequestError, StoreUnavailableError
from serving.ports import free_port
from serving.repo.plan import Column, FeatureServicePlan, FeatureViewPlan, Projection, ServingPlan
from serving.store import codec, encoding
from serving.store.online_store import OnlineStore
from serving.store.read_plan import build_read_plan
from serving.store.reads import MISSING, PRESENT, STALE
from serving.store.redis_process import RedisProcess
from serving.store.settings import RedisSettings
from serving.store.write_guard import RowBatch
from tests.helpers import raw_redis

pytestmark = pytest.mark.integration

PROJECT = "proj"
NOW_S = 1_800_000_000
HOUR_US = 3_600 * 10**6
NOW_US = NOW_S * 10**6


def _view(name: str, keys: list[tuple[str, str]], features: list[tuple[str, str]], ttl_s: int):
    return FeatureViewPlan(
        name=name,
        join_keys=tuple(Column(n, d) for n, d in keys),
        features=tuple(Column(n, d) for n, d in features),
        ttl_s=ttl_s,
        source=None,
    )


DRIVER = _view(
    "driver_stats",
    [("driver_id", "Int64")],
    [("rate", "Float32"), ("trips", "Int64"), ("vehicle", "String"), ("tags", "Array(String)")],
    ttl_s=2 * 3600,
)
ZONE = _view("zone_stats", [("zone_id", "Int64")], [("ratio", "Float64")], ttl_s=0)
ROUTE = _view(
    "route_stats", [("city", "String"), ("zone_id", "Int32")], [("eta_s", "Float64")], ttl_s=0
)
SERVICE = FeatureServicePlan(
    "svc",
    (
        Projection("driver_stats", "driver_stats", {}, ("rate", "trips", "vehicle", "tags")),
        Projection("zone_stats", "pickup", {"zone_id": "pickup_zone_id"}, ("ratio",)),
        Projection("zone_stats", "dropoff", {"zone_id": "dropoff_zone_id"}, ("ratio",)),
        Projection("route_stats", "route_stats", {"zone_id": "route_zone"}, ("eta_s",)),
    ),
)
PLAN = ServingPlan(
    PROJECT,
    "fp",
    {v.name: v for v in (DRIVER, ZONE, ROUTE)},
    {},
    {"svc": SERVICE},
)


@pytest.fixture
def store(redis_url: str) -> Iterator[OnlineStore]:
    store = OnlineStore(RedisSettings(redis_url), PROJECT)
    yield store
    store.close()


def _batch(
    view: FeatureViewPlan, keys: Sequence[Sequence[object]], ts_us: list[int], columns
) -> RowBatch:
    dtypes = [k.dtype for k in view.join_keys]
    names = [k.name for k in view.join_keys]
    return RowBatch(
        encoding.encode_entity_keys(names, dtypes, keys, PROJECT),
        encoding.encode_timestamps(np.array(ts_us, np.int64)),
        [encoding.encode_values(f.dtype, c) for f, c in zip(view.features, columns, strict=True)],
    )


def _write(store: OnlineStore, view: FeatureViewPlan, batch: RowBatch):
    return store.write_view(view.name, [f.name for f in view.features], [batch])


def _write_drivers(store: OnlineStore, ids: list[int], ts_us: list[int], base: float = 0.0):
    n = len(ids)
    columns = [
        np.array([base + i / 4 for i in range(n)], np.float32),
        [10 * i for i in range(n)],
        ["economy", "xl", None, ""][:n] + ["moto"] * max(0, n - 4),
        [["a"], [], None, [""]][:n] + [["b", "c"]] * max(0, n - 4),
    ]
    return _write(store, DRIVER, _batch(DRIVER, [ids], ts_us, columns))


# --- the write guard ----------------------------------------------------------------------


def test_rows_are_written_only_when_newer_than_the_stored_timestamp(
    store: OnlineStore, redis_url: str
) -> None:
    assert _write_drivers(store, [1, 2, 3], [NOW_US] * 3).written == 3
    counts = _write_drivers(store, [1, 2, 3, 4], [NOW_US - 1, NOW_US, NOW_US + 1, NOW_US], 9.0)
    assert (counts.written, counts.skipped) == (2, 2)  # older and equal rows are skipped
    read = store.read_raw(
        build_read_plan(PLAN, SERVICE.projections[:1]), {"driver_id": [1, 2, 3, 4]}
    )
    assert read.values[0] == [0.0, 0.25, pytest.approx(9.5), pytest.approx(9.75)]
    assert read.event_ts_us[:, 0].tolist() == [NOW_US, NOW_US, NOW_US + 1, NOW_US]


TS = st.integers(-(2**40), 2**40)  # microseconds, before and after 1970


@given(stored=st.one_of(st.none(), TS), new=TS)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_guard_follows_feast_rule_for_any_pair_of_timestamps(
    store: OnlineStore, redis_url: str, stored: int | None, new: int
) -> None:
    client = raw_redis(redis_url)
    client.flushdb()
    if stored is not None:
        _write_drivers(store, [7], [stored])
    counts = _write_drivers(store, [7], [new], base=5.0)
    # Feast: skip only when a stored time > 0 exists and new <= stored (nanosecond compare)
    expect_write = stored is None or stored <= 0 or new > stored
    assert counts.written == int(expect_write)
    key = encoding.encode_entity_keys(["driver_id"], ["Int64"], [[7]], PROJECT)[0]
    kept = codec.decode_timestamp_micros(client.hget(key, b"_ts:driver_stats")) or 0
    assert kept == (new if expect_write else stored)


def test_key_ttl_is_set_on_written_rows_only(redis_url: str) -> None:
    client = raw_redis(redis_url)
    plain = OnlineStore(RedisSettings(redis_url), PROJECT)
    _write_drivers(plain, [1], [NOW_US])
    store = OnlineStore(RedisSettings(redis_url, key_ttl_s=1234), PROJECT)
    counts = _write_drivers(store, [1, 2], [NOW_US, NOW_US])  # 1 is skipped: equal time
    assert (counts.written, counts.skipped) == (1, 1)
    key1, key2 = encoding.encode_entity_keys(["driver_id"], ["Int64"], [[1, 2]], PROJECT)
    assert client.ttl(key1) == -1
    assert 1230 <= client.ttl(key2) <= 1234
    store.close()
    plain.close()


def test_writing_one_view_leaves_another_view_on_the_same_key_alone(
    store: OnlineStore, redis_url: str
) -> None:
    other = _view("driver_extra", [("driver_id", "Int64")], [("x", "Int64")], 0)
    _write(store, other, _batch(other, [[1]], [NOW_US + 10], [[5]]))
    _write_drivers(store, [1], [NOW_US])
    key = encoding.encode_entity_keys(["driver_id"], ["Int64"], [[1]], PROJECT)[0]
    fields = raw_redis(redis_url).hgetall(key)
    assert fields[codec.field_name("driver_extra", "x")] == b"\x20\x05"
    assert len(fields) == 2 + 5  # (x, _ts:driver_extra) + 4 features and _ts:driver_stats


# --- reads --------------------------------------------------------------------------------


def test_read_decodes_into_a_matrix_with_status_and_event_times(store: OnlineStore) -> None:
    _write_drivers(store, [1, 2, 3, 4], [NOW_US, NOW_US, NOW_US - 3 * HOUR_US, NOW_US])
    _write(store, ZONE, _batch(ZONE, [[10, 20]], [NOW_US - 100 * HOUR_US] * 2, [[0.5, None]]))
    cats = {"driver_stats__vehicle": {b"\x12\x07economy": 0.0, b"\x12\x02xl": 1.0}}
    plan = build_read_plan(PLAN, SERVICE.projections[:3], categories=cats)
    entities: dict[str, Any] = {
        "driver_id": np.array([1, 2, 3, 4, 99, 1]),
        "pickup_zone_id": [10, 10, 20, 99, 10, 10],
        "dropoff_zone_id": [20, 10, 10, 10, 10, 10],
    }
    read = store.read(plan, entities, now_s=NOW_S)
    nan = np.nan
    expected = [
        [0.0, 0.0, 0.0, nan, 0.5, nan],
        [0.25, 10.0, 1.0, nan, 0.5, 0.5],
        [nan, nan, nan, nan, nan, 0.5],  # driver 3 is older than the 2 h ttl: stale
        [0.75, 30.0, nan, nan, nan, 0.5],  # "" is not a known category
        [nan, nan, nan, nan, 0.5, 0.5],
        [0.0, 0.0, 0.0, nan, 0.5, 0.5],
    ]
    np.testing.assert_array_equal(read.values, np.array(expected))
    assert read.status[2].tolist() == [STALE, STALE, MISSING, MISSING, MISSING, PRESENT]
    assert read.status[0].tolist() == [PRESENT, PRESENT, PRESENT, MISSING, PRESENT, MISSING]
    assert read.missing_per_row.tolist() == [2, 1, 5, 3, 4, 1]
    assert read.event_ts_us[:, 0].tolist() == [
        NOW_US,
        NOW_US,
        NOW_US - 3 * HOUR_US,
        NOW_US,
        0,
        NOW_US,
    ]
    assert read.event_ts_us[0, 1] == NOW_US - 100 * HOUR_US  # zone_stats has no ttl


def test_read_raw_returns_python_values_of_any_type(store: OnlineStore) -> None:
    _write_drivers(store, [1, 2, 3, 4], [NOW_US, NOW_US, NOW_US, NOW_US - 3 * HOUR_US])
    plan = build_read_plan(PLAN, SERVICE.projections[:1])
    read = store.read_raw(plan, {"driver_id": [1, 2, 3, 4, 5]}, now_s=NOW_S)
    assert read.values[2] == ["economy", "xl", None, None, None]
    assert read.values[3] == [["a"], [], None, None, None]
    assert read.status[:, 2].tolist() == [PRESENT, PRESENT, MISSING, STALE, MISSING]


def test_composite_keys_with_string_and_int32_join_keys_and_a_join_key_map(
    store: OnlineStore,
) -> None:
    batch = _batch(ROUTE, [["north", "", "ü"], [-7, 0, 2**31 - 1]], [NOW_US] * 3, [[1.0, 2.0, 3.0]])
    assert _write(store, ROUTE, batch).written == 3
    plan = build_read_plan(PLAN, SERVICE.projections[3:])
    assert plan.entity_columns == ("city", "route_zone")
    read = store.read(plan, {"route_zone": [0, -7, 2**31 - 1, 5], "city": ["", "north", "ü", "x"]})
    np.testing.assert_array_equal(read.values[:, 0], [2.0, 1.0, 3.0, np.nan])


def test_one_round_trip_with_one_hmget_per_distinct_key(store: OnlineStore, redis_url: str) -> None:
    _write_drivers(store, [1, 2], [NOW_US] * 2)
    client = raw_redis(redis_url)
    client.config_resetstat()
    plan = build_read_plan(PLAN, SERVICE.projections[:3])
    entities = {
        "driver_id": [1, 1, 2, 1],
        "pickup_zone_id": [5, 5, 5, 5],
        "dropoff_zone_id": [5, 6, 7, 8],
    }
    store.read(plan, entities)
    calls = client.info("commandstats")["cmdstat_hmget"]["calls"]
    assert calls == 2 + 1 + 4  # drivers {1, 2}, pickups {5}, dropoffs {5, 6, 7, 8}


def test_bad_entities_are_invalid_requests(store: OnlineStore) -> None:
    plan = build_read_plan(PLAN, SERVICE.projections[:1])
    with pytest.raises(InvalidRequestError, match="missing column 'driver_id'"):
        store.read(plan, {"driver": [1]})
    with pytest.raises(InvalidRequestError, match="row 1"):
        store.read(plan, {"driver_id": [1, "x"]})
    plan = build_read_plan(PLAN, SERVICE.projections[:2])
    with pytest.raises(InvalidRequestError, match="differ in length"):
        store.read(plan, {"driver_id": [1, 2], "pickup_zone_id": [1]})
    assert store.read(plan, {"driver_id": [], "pickup_zone_id": []}).values.shape == (0, 5)


# --- outages ------------------------------------------------------------------------------


def test_unreachable_redis_is_store_unavailable_naming_the_redacted_url() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    store = OnlineStore(RedisSettings(url), PROJECT)
    with pytest.raises(StoreUnavailableError, match=r"redis://:\*\*\*@127\.0\.0\.1") as error:
        store.ping(timeout_s=0.2)
    assert "s3cret" not in str(error.value)
    plan = build_read_plan(PLAN, SERVICE.projections[:1])
    with pytest.raises(StoreUnavailableError):
        store.read(plan, {"driver_id": [1]})


PAUSE_MS = 2_000  # far beyond the 0.1 s deadline, so that a slow machine cannot outlast it


def test_a_paused_redis_times_out_within_the_deadline(store: OnlineStore, redis_url: str) -> None:
    plan = build_read_plan(PLAN, SERVICE.projections[:1])
    store.read(plan, {"driver_id": [1]})  # a pooled connection exists
    raw_redis(redis_url).execute_command("CLIENT", "PAUSE", str(PAUSE_MS), "ALL")
    started = time.perf_counter()
    with pytest.raises(StoreUnavailableError, match=r"[Tt]imeout"):
        store.read(plan, {"driver_id": [1]}, timeout_s=0.1)
    assert time.perf_counter() - started < 0.5
    # Redis holds this read until its pause ends, then answers: on a fresh connection, as
    # the one that timed out still has the late reply to the first read coming.
    read = store.read(plan, {"driver_id": [1]}, timeout_s=PAUSE_MS / 1000 + 5)
    assert read.values.shape == (1, 4)


def test_store_recovers_after_redis_restarts(redis_server: RedisProcess, redis_url: str) -> None:
    store = OnlineStore(RedisSettings(redis_url), PROJECT)
    plan = build_read_plan(PLAN, SERVICE.projections[:1])
    _write_drivers(store, [1], [NOW_US])
    redis_server.stop()
    try:
        with pytest.raises(StoreUnavailableError):
            store.read(plan, {"driver_id": [1]})
        with pytest.raises(StoreUnavailableError):
            _write_drivers(store, [1], [NOW_US])
    finally:
        redis_server.start()
    assert _write_drivers(store, [1], [NOW_US]).written == 1  # no persistence: empty again
    read = store.read(plan, {"driver_id": [1]}, now_s=NOW_S)
    assert read.values[0, :2].tolist() == [0.0, 0.0]
    store.close()


def test_a_connection_that_redis_dropped_is_replaced_without_failing_a_read(
    redis_server: RedisProcess, redis_url: str
) -> None:
    store = OnlineStore(RedisSettings(redis_url), PROJECT)
    plan = build_read_plan(PLAN, SERVICE.projections[:1])
    _write_drivers(store, [1], [NOW_US])
    assert store.read(plan, {"driver_id": [1]}, now_s=NOW_S).missing_per_row.tolist() == [0]
    raw_redis(redis_url).execute_command("CLIENT", "KILL", "TYPE", "normal")
    read = store.read(plan, {"driver_id": [1]}, now_s=NOW_S)  # the read link was killed
    assert read.values[0, :2].tolist() == [0.0, 0.0]
    store.close()


def test_an_error_reply_is_a_clear_store_error(store: OnlineStore, redis_url: str) -> None:
    plan = build_read_plan(PLAN, SERVICE.projections[:1])
    key = plan.groups[0].encode_keys([[1]])[0]
    raw_redis(redis_url).set(key, b"not a hash")
    with pytest.raises(StoreUnavailableError, match="WRONGTYPE"):
        store.read(plan, {"driver_id": [1, 2]})
    _write_drivers(store, [2], [NOW_US])
    assert store.read(plan, {"driver_id": [2]}, now_s=NOW_S).values[0, 0] == 0.0


@pytest.mark.parametrize("features", [1, 40, 41, 150])
def test_any_number_of_features_is_written_whole(
    store: OnlineStore, redis_url: str, features: int
) -> None:
    names = [f"f{i}" for i in range(features)]
    view = _view("wide", [("driver_id", "Int64")], [(n, "Int64") for n in names], 0)
    columns = [[i, -i] for i in range(features)]
    assert _write(store, view, _batch(view, [[1, 2]], [NOW_US] * 2, columns)).written == 2
    key = encoding.encode_entity_keys(["driver_id"], ["Int64"], [[2]], PROJECT)[0]
    stored = raw_redis(redis_url).hgetall(key)
    assert len(stored) == features + 1
    assert [codec.decode_value(stored[codec.field_name("wide", n)]) for n in names] == [
        -i for i in range(features)
    ]
    assert _write(store, view, _batch(view, [[1, 2]], [NOW_US] * 2, columns)).skipped == 2
