"""Carrara's materialize and reader against Feast itself, both ways, on two repos: a dedicated
one (Int32 and String join keys, a composite key, every scalar and list type, nulls, empty
strings and lists, ties on the event time, an older row) and the sample feature_repo.

(a) Redis after `carrara materialize` == after `feast materialize`, byte for byte (keys,
fields, values, TTLs); (b) Feast's get_online_features returns what Carrara wrote; (c)
Carrara's reader returns what Feast wrote; and the registry interval is shared both ways.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from serving.batch.materialize import materialize
from serving.repo.compile import apply_repo, ensure_plan, feast_context
from serving.repo.plan import Projection, RepoFiles, load_plan
from serving.store import codec, encoding
from serving.store.online_store import OnlineStore
from serving.store.read_plan import build_read_plan
from serving.store.reads import PRESENT
from serving.store.redis_process import RedisProcess
from serving.store.settings import RedisSettings
from serving.store.write_guard import RowBatch
from tests.helpers import WORLD_END, Snapshot, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START = datetime(2026, 10, 1, tzinfo=UTC)
END = START + timedelta(days=1)
HOUR = timedelta(hours=1)
KEY_TTL_S = 86_400

DEFINITIONS = """
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.types import Array, Bool, Bytes, Float32, Float64, Int32, Int64, String, UnixTimestamp
from feast.value_type import ValueType

vehicle = Entity(name="vehicle", join_keys=["vehicle_id"], value_type=ValueType.INT32)
account = Entity(name="account", join_keys=["account"], value_type=ValueType.STRING)
driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
city = Entity(name="city", join_keys=["city"], value_type=ValueType.STRING)

vehicle_stats = FeatureView(
    name="vehicle_stats",
    entities=[vehicle],
    ttl=timedelta(days=2),
    schema=[
        Field(name="vehicle_id", dtype=Int32),
        Field(name="speed", dtype=Float32),
        Field(name="load", dtype=Float64),
        Field(name="trips", dtype=Int64),
        Field(name="seats", dtype=Int32),
        Field(name="model", dtype=String),
        Field(name="electric", dtype=Bool),
        Field(name="last_seen", dtype=UnixTimestamp),
        Field(name="stops", dtype=Array(Int64)),
        Field(name="tags", dtype=Array(String)),
        Field(name="temps", dtype=Array(Float32)),
    ],
    source=FileSource(
        path="data/vehicle_stats.parquet",
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
    ),
)

account_stats = FeatureView(
    name="account_stats",
    entities=[account],
    ttl=timedelta(days=2),
    schema=[
        Field(name="account", dtype=String),
        Field(name="balance", dtype=Float64),
        Field(name="note", dtype=String),
        Field(name="blob", dtype=Bytes),
    ],
    source=FileSource(path="data/account_stats.parquet", timestamp_field="event_timestamp"),
)

driver_city = FeatureView(
    name="driver_city",
    entities=[driver, city],
    ttl=timedelta(days=2),
    schema=[
        Field(name="driver_id", dtype=Int64),
        Field(name="city", dtype=String),
        Field(name="rides", dtype=Int64),
        Field(name="score", dtype=Float32),
    ],
    source=FileSource(
        path="data/driver_city.parquet", timestamp_field="ts", created_timestamp_column="created"
    ),
)

everything = FeatureService(name="everything", features=[vehicle_stats, account_stats, driver_city])
"""


def _vehicles() -> pa.Table:
    s, e, h = START, END, HOUR
    # id, event, created, speed, load, trips, seats, model, electric, last_seen, stops, tags, temps
    rows = [
        (1, s + h, s, 1.5, 2.5, 10, 4, "old", True, s, [1, 2], ["a"], [0.5]),
        (1, s + 2 * h, s, 3.25, 4.5, 11, 5, "new", False, s + h, [3], ["b", "c"], [-1.25, 2.0]),
        (1, e + h, s, 9.0, 9.0, 99, 9, "after the window", True, s, [9], ["z"], [9.0]),
        (-7, s + h, s, None, None, None, None, None, None, None, None, None, None),
        (2, s + h, s, 0.0, -0.0, 0, 0, "", False, s - timedelta(days=20_000), [], [""], []),
        (3, s + h, s + h, 1.0, 1.0, 1, 1, "created earlier", True, s, [1], ["x"], [1.0]),
        (3, s + h, s + 2 * h, 2.0, 2.0, 2, 2, "created later", True, s, [2], ["y"], [2.0]),
        (4, s, s, 4.0, 4.0, 2**40, -(2**31), "at the start", True, s, [-(2**62)], ["ü"], [4.0]),
        (5, e, s, 5.0, 5.0, -1, 2**31 - 1, "at the end", True, s, [2**63 - 1], ["é", ""], [5.0]),
        (6, s + h, s, 6.0, 6.0, 6, 6, "older than what is stored", True, s, [6], ["6"], [6.0]),
    ]
    c = list(zip(*rows, strict=True))
    ts = pa.timestamp("us", tz="UTC")
    return pa.table(
        {
            "vehicle_id": pa.array(c[0], pa.int32()),
            "event_timestamp": pa.array(c[1], ts),
            "created": pa.array(c[2], ts),
            "speed": pa.array(c[3], pa.float32()),
            "load": pa.array(c[4], pa.float64()),
            "trips": pa.array(c[5], pa.int64()),
            "seats": pa.array(c[6], pa.int32()),
            "model": pa.array(c[7], pa.string()),
            "electric": pa.array(c[8], pa.bool_()),
            "last_seen": pa.array(c[9], ts),
            "stops": pa.array(c[10], pa.list_(pa.int64())),
            "tags": pa.array(c[11], pa.list_(pa.string())),
            "temps": pa.array(c[12], pa.list_(pa.float32())),
        }
    )


def _accounts() -> pa.Table:
    return pa.table(
        {
            "account": ["alice", "", "ü", "bob"],
            "event_timestamp": pa.array([START + HOUR] * 4, pa.timestamp("ns")),
            "balance": [1.5, None, -2.0, 0.0],
            "note": ["hi", "", None, "bob"],
            "blob": pa.array([b"\x00\x01", b"", None, b"b"], pa.binary()),
        }
    )


def _driver_cities() -> pa.Table:
    ts = pa.timestamp("us", tz="UTC")
    return pa.table(
        {
            "driver_id": pa.array([1, 1, 2, 1], pa.int64()),
            "city": ["north", "south", "north", "north"],
            "ts": pa.array([START + HOUR, START + HOUR, START + 3 * HOUR, START], ts),
            "created": pa.array([START] * 4, ts),
            "rides": [10, 20, 30, 5],
            "score": pa.array([0.1, 0.2, None, 0.0], pa.float32()),
        }
    )


@pytest.fixture(scope="module")
def dedicated_repo(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisProcess) -> Path:
    repo = tmp_path_factory.mktemp("dedicated") / "repo"
    (repo / "data").mkdir(parents=True)
    # A unique module name: Feast imports repo files by name, and `definitions` is taken by
    # the sample repo in this same process.
    (repo / "carrara_materialize_test_definitions.py").write_text(DEFINITIONS)
    (repo / "feature_store.yaml").write_text(
        "project: dedicated\nregistry: data/registry.db\nprovider: local\n"
        f'online_store:\n    type: redis\n    connection_string: "127.0.0.1:{redis_server.port}"\n'
        f"    key_ttl_seconds: {KEY_TTL_S}\n"
        "offline_store:\n    type: file\nentity_key_serialization_version: 3\n"
    )
    for name, table in {
        "vehicle_stats": _vehicles(),
        "account_stats": _accounts(),
        "driver_city": _driver_cities(),
    }.items():
        pq.write_table(table, repo / "data" / f"{name}.parquet")
    apply_repo(repo)
    return repo


@pytest.fixture(scope="module")
def sample_repo(tmp_path_factory: pytest.TempPathFactory, applied_repo: Path) -> Path:
    repo = tmp_path_factory.mktemp("sample") / "feature_repo"
    shutil.copytree(applied_repo, repo)
    return repo


class Feast:
    """One Feast FeatureStore per repo for the module (importing Feast costs ~8 s once)."""

    def __init__(self, repo: Path) -> None:
        with feast_context(repo):
            from feast import FeatureStore

            self.store = FeatureStore(repo_path=str(repo))
        self.repo = repo

    def materialize(self, start: datetime, end: datetime, views: list[str] | None = None) -> None:
        self.store.refresh_registry()  # Carrara may have written the registry meanwhile
        with feast_context(self.repo):
            self.store.materialize(start, end, feature_views=views)

    def online(self, service: str, entity_rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
        self.store.refresh_registry()
        with feast_context(self.repo):
            response = self.store.get_online_features(
                features=self.store.get_feature_service(service),
                entity_rows=entity_rows,
                full_feature_names=True,
            )
        return response.to_dict()


@pytest.fixture(scope="module")
def feast_dedicated(dedicated_repo: Path) -> Feast:
    return Feast(dedicated_repo)


@pytest.fixture(scope="module")
def feast_sample(sample_repo: Path) -> Feast:
    return Feast(sample_repo)


def assert_same(feast: Snapshot, carrara: Snapshot) -> None:
    assert feast.keys() == carrara.keys()
    for key, (fields, ttl) in feast.items():
        assert carrara[key][0] == fields, key
        assert abs(carrara[key][1] - ttl) <= 5, key  # both -1, or the same key_ttl_seconds


def _store_newer_vehicle_6(url: str) -> None:
    """Someone already wrote vehicle 6 with a newer event time: nobody may overwrite it."""
    store = OnlineStore(RedisSettings(url, key_ttl_s=KEY_TTL_S), "dedicated")
    key = encoding.encode_entity_keys(["vehicle_id"], ["Int32"], [[6]], "dedicated")
    newer = encoding.encode_timestamps(np.array([int((END + 5 * HOUR).timestamp()) * 10**6]))
    store.write_view(
        "vehicle_stats", ["trips"], [RowBatch(key, newer, [encoding.encode_values("Int64", [606])])]
    )
    store.close()


def _flush(url: str) -> None:
    redis.Redis.from_url(url).flushall()


@pytest.fixture(scope="module")
def dedicated_states(
    redis_server: RedisProcess, dedicated_repo: Path, feast_dedicated: Feast
) -> dict[str, Snapshot]:
    """Redis after Feast's materialize and after Carrara's, from the same starting state."""
    url = redis_server.url
    states = {}
    for who in ("feast", "carrara"):
        _flush(url)
        _store_newer_vehicle_6(url)
        if who == "feast":
            feast_dedicated.materialize(START, END)
        else:
            materialize(dedicated_repo, START, END)
        states[who] = snapshot(url)
    return states


# --- (a) the same bytes -------------------------------------------------------------------


def test_carrara_writes_what_feast_writes_byte_for_byte(
    dedicated_states: dict[str, Snapshot],
) -> None:
    assert_same(dedicated_states["feast"], dedicated_states["carrara"])
    assert len(dedicated_states["carrara"]) == 7 + 4 + 3  # vehicles, accounts, (driver, city)
    ttls = {ttl for _, ttl in dedicated_states["carrara"].values()}
    assert all(KEY_TTL_S - 10 <= ttl <= KEY_TTL_S for ttl in ttls)


def test_the_older_row_did_not_overwrite_the_newer_one(
    dedicated_states: dict[str, Snapshot],
) -> None:
    key = encoding.encode_entity_keys(["vehicle_id"], ["Int32"], [[6]], "dedicated")[0]
    for state in dedicated_states.values():
        fields = state[key][0]
        assert codec.decode_value(fields[codec.field_name("vehicle_stats", "trips")]) == 606
        assert codec.field_name("vehicle_stats", "model") not in fields


def test_sample_repo_bytes_match_feast(
    sample_repo: Path, feast_sample: Feast, redis_server: RedisProcess
) -> None:
    url = redis_server.url
    start, end = WORLD_END - timedelta(hours=6), WORLD_END
    _flush(url)
    # Not zone_activity: Feast's local engine refuses windowed views (Carrara skips them).
    feast_sample.materialize(start, end, ["driver_stats", "zone_stats", "route_stats"])
    by_feast = snapshot(url)
    _flush(url)
    report = materialize(sample_repo, start, end)
    assert {v.view for v in report.views} == {"driver_stats", "zone_stats", "route_stats"}
    assert_same(by_feast, snapshot(url))
    assert len(by_feast) > 300


# --- (b) Feast reads what Carrara wrote, (c) Carrara reads what Feast wrote ---------------

ENTITY_ROWS = [
    {"vehicle_id": v, "account": a, "driver_id": d, "city": c}
    for v, a, d, c in [
        (1, "alice", 1, "north"),
        (-7, "", 1, "south"),
        (2, "ü", 2, "north"),
        (3, "bob", 2, "south"),
        (4, "nobody", 1, "north"),
        (5, "alice", 3, "x"),
        (6, "alice", 1, "north"),
        (99, "alice", 1, "north"),
    ]
]


def _service_projections(repo: Path) -> tuple[Projection, ...]:
    return load_plan(RepoFiles.locate(repo)).feature_service("everything").projections


def test_feast_reads_what_carrara_wrote(
    redis_server: RedisProcess, dedicated_repo: Path, feast_dedicated: Feast
) -> None:
    url = redis_server.url
    _flush(url)
    _store_newer_vehicle_6(url)
    feast_dedicated.materialize(START, END)
    by_feast = feast_dedicated.online("everything", ENTITY_ROWS)
    _flush(url)
    _store_newer_vehicle_6(url)
    materialize(dedicated_repo, START, END)
    by_carrara = feast_dedicated.online("everything", ENTITY_ROWS)
    assert by_carrara == by_feast
    assert by_carrara["vehicle_stats__model"][:6] == [
        "new",
        None,
        "",
        "created later",
        "at the start",
        "at the end",
    ]
    assert by_carrara["vehicle_stats__tags"][:3] == [["b", "c"], None, [""]]
    assert by_carrara["vehicle_stats__stops"][2] == []
    assert by_carrara["vehicle_stats__speed"][0] == 3.25
    assert by_carrara["account_stats__note"][:3] == ["hi", "", None]
    assert by_carrara["driver_city__rides"][:4] == [10, 20, 30, None]


def test_carrara_reads_what_feast_wrote(
    redis_server: RedisProcess, dedicated_repo: Path, feast_dedicated: Feast
) -> None:
    url = redis_server.url
    _flush(url)
    _store_newer_vehicle_6(url)
    feast_dedicated.materialize(START, END)
    by_feast = feast_dedicated.online("everything", ENTITY_ROWS)
    plan = ensure_plan(dedicated_repo)
    read_plan = build_read_plan(plan, _service_projections(dedicated_repo))
    entities = {
        k: [row[k] for row in ENTITY_ROWS] for k in ("vehicle_id", "account", "driver_id", "city")
    }
    store = OnlineStore(RedisSettings(url), plan.project)
    now_s = (END + HOUR).timestamp()
    raw = store.read_raw(read_plan, entities, now_s=now_s)
    matrix = store.read(read_plan, entities, now_s=now_s)
    store.close()
    for i, name in enumerate(read_plan.feature_names):
        expected = by_feast[name]
        if name == "vehicle_stats__last_seen":  # Feast returns datetimes, the codec seconds
            expected = [None if v is None else int(v.timestamp()) for v in expected]
        assert raw.values[i] == expected, name
        if name.split("__")[1] in (
            "speed",
            "load",
            "trips",
            "seats",
            "electric",
            "balance",
            "rides",
            "score",
        ):
            numbers = [np.nan if v is None else float(v) for v in expected]
            np.testing.assert_array_equal(matrix.values[:, i], numbers, err_msg=name)
    assert (raw.status[0] == PRESENT).all()


# --- the registry interval, both ways -----------------------------------------------------


def test_feast_and_carrara_resume_from_each_other_s_interval(
    redis_server: RedisProcess, dedicated_repo: Path, feast_dedicated: Feast
) -> None:
    materialize(dedicated_repo, START, END + 2 * HOUR, views=["driver_city"])
    feast_dedicated.store.refresh_registry()
    view = feast_dedicated.store.get_feature_view("driver_city")
    assert view.most_recent_end_time == END + 2 * HOUR
    with feast_context(dedicated_repo):
        feast_dedicated.store.materialize_incremental(END + 5 * HOUR, feature_views=["driver_city"])
    report = materialize(
        dedicated_repo, end=END + 6 * HOUR, incremental=True, views=["driver_city"]
    )
    assert report.views[0].start == END + 5 * HOUR
    load_plan(RepoFiles.locate(dedicated_repo))  # Carrara's registry write kept the plan current


def test_feast_reserializes_carrara_s_registry_to_the_same_bytes(
    dedicated_repo: Path, feast_dedicated: Feast
) -> None:
    materialize(dedicated_repo, START, END, views=["account_stats"])
    with feast_context(dedicated_repo):
        from feast.protos.feast.core.Registry_pb2 import Registry

    data = RepoFiles.locate(dedicated_repo).registry.read_bytes()
    registry = Registry()
    registry.ParseFromString(data)
    assert registry.SerializeToString() == data
    view = next(v for v in registry.feature_views if v.spec.name == "account_stats")
    assert view.meta.materialization_intervals[-1].end_time.ToDatetime(tzinfo=UTC) == END
    assert view.meta.state == 4  # AVAILABLE_ONLINE, as Feast's apply_materialization sets


@pytest.fixture(autouse=True)
def _clean_redis(redis_server: RedisProcess) -> Iterator[None]:
    yield
    _flush(redis_server.url)
