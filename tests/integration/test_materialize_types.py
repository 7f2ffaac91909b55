"""Every type Feast 0.67 materializes to Redis, and the repository shapes around them, against
`feast materialize` itself: a dedicated repo applied by Feast, materialized by Feast and by
Carrara from the same start, Redis compared key by key, field by field.

Values must be byte-identical, except where Feast's own bytes are not reproducible: map and
struct entries (Feast's upb runtime orders them by a per-process hash), compared after
deterministic re-serialization, and sets of strings (ordered by Python's per-process string
hash), compared as sets. Int64 values beyond 2^53 in a column with nulls differ on purpose:
Feast rounds them through float64, Carrara writes them exactly, and says so.

Also here: entityless views, folder and hive-partitioned sources, a stream feature view
(materialized from its batch source), ttl=None against ttl=0, entity_key_serialization_version
1 and 2, and what Feast refuses (a short vector) refused before anything is written.
"""

# ruff: noqa: E501  (one column of test data per line)
from __future__ import annotations

import decimal
import logging
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from serving.batch.materialize import materialize
from serving.errors import DataError
from serving.repo.compile import apply_repo, ensure_plan, feast_context
from serving.repo.feast_registry import materialized_until, read_registry
from serving.repo.plan import RepoFiles
from serving.store import codec
from serving.store.redis_process import RedisProcess
from tests.helpers import Snapshot, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# yesterday, 00:00 UTC: the rows are within their views' ttl (2 days) when served
T0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
START, END = T0, T0 + timedelta(days=1)
TS = pa.timestamp("us", tz="UTC")
U1, U2 = "6f1c1a52-2f0e-4c3c-9a59-0f6d3f2b9c11", "a3bb189e-8bf9-11ee-b9d1-0242ac120002"
D = decimal.Decimal
COMPARED: tuple[str, ...] = ("scalars", "lists", "sets", "objects", "entityless", "folder")
COMPARED += ("hive", "vectors", "streamed")


def _struct(**fields: Any) -> Any:
    return pa.struct(list(fields.items()))


# view -> {column: (Feast dtype expression, Arrow values)}; 6 rows each, entity ids 0..5
COLUMNS: dict[str, dict[str, tuple[str, pa.Array]]] = {
    "scalars": {
        "raw": ("Bytes", pa.array([b"a", b"", None, b"\x00\xff", b"z", b"q"], pa.binary())),
        "pdf": ("PdfBytes", pa.array([b"%PDF", None, b"", b"x", b"y", b"z"], pa.binary())),
        "image": ("ImageBytes", pa.array([None, b"\x89PNG", b"", b"x", b"y", b"z"], pa.large_binary())),
        "text": ("String", pa.array(["a", "", None, "ü", "x", "y"])),
        "flag": ("Bool", pa.array([True, False, None, True, False, True])),
        "small": ("Int32", pa.array([1, -(2**31), 2**31 - 1, None, 0, 7], pa.int32())),
        "big": ("Int64", pa.array([2**62, -(2**63), 0, 1, -1, 2**40], pa.int64())),
        "f32": ("Float32", pa.array([1.5, -0.0, None, float("inf"), 3.25, 0.1], pa.float32())),
        "f64": ("Float64", pa.array([0.1, None, -2.5, 1e300, 0.0, -0.0])),
        "seen": ("UnixTimestamp", pa.array([T0, None, T0 - timedelta(days=20_000), T0, T0, T0], TS)),
        "uid": ("Uuid", pa.array([U1, U2, None, U1, U2, U1])),
        "tuid": ("TimeUuid", pa.array([U2, None, U2, U2, U2, U2])),
        "dec_text": ("Decimal", pa.array(["1.50", "-0.001", None, "1e10", "0", "7"])),
        "dec": ("Decimal", pa.array([D("1.500"), None, D("0"), D("-2.125"), D("3"), D("4")], pa.decimal128(10, 3))),
    },
    "lists": {
        "raws": ("Array(Bytes)", pa.array([[b"a", b""], [], None, [None, b"x"], [b"z"], [b"q"]], pa.list_(pa.binary()))),
        "texts": ("Array(String)", pa.array([["a", ""], [], None, [None, "x"], ["ü"], ["y"]])),
        "flags": ("Array(Bool)", pa.array([[True, False], [], None, [None, True], [False], [True]])),
        "smalls": ("Array(Int32)", pa.array([[1, -1], [], None, [2], [2**31 - 1], [0]], pa.list_(pa.int32()))),
        "bigs": ("Array(Int64)", pa.array([[2**63 - 1], [], None, [-(2**62), 0], [5], [6]], pa.list_(pa.int64()))),
        "f32s": ("Array(Float32)", pa.array([[1.5, -0.0], [], None, [None, 2.0], [0.25], [1.0]], pa.list_(pa.float32()))),
        "f64s": ("Array(Float64)", pa.array([[1.5, 0.1], [], None, [None, 2.0], [float("inf")], [0.0]])),
        "seens": ("Array(UnixTimestamp)", pa.array([[T0, T0 + timedelta(seconds=1)], [], None, [None, T0], [T0], [T0]], pa.list_(TS))),
        "uids": ("Array(Uuid)", pa.array([[U1, U2], [], None, [None, U1], [U2], [U1]])),
        "tuids": ("Array(TimeUuid)", pa.array([[U2], [], None, [None, U2], [U2], [U2]])),
        "decs": ("Array(Decimal)", pa.array([["1.5", "2"], [], None, [None, "3"], ["0"], ["1"]])),
        "jsons": ("Array(Json)", pa.array([['{"a": 1}', "[]"], [], None, [None, "1"], ['"x"'], ["null"]])),
    },
    "sets": {
        "texts": ("Set(String)", pa.array([["b", "a", "b", "c"], [], None, ["x"], ["y", "z"], [""]])),
        "bigs": ("Set(Int64)", pa.array([[3, 1, 3, 2**40, -5], [], None, [2], [9, 8, 9], [0]], pa.list_(pa.int64()))),
        "smalls": ("Set(Int32)", pa.array([[3, 1, 3, -7], [], None, [2], [4, 4], [0]], pa.list_(pa.int32()))),
        "f32s": ("Set(Float32)", pa.array([[1.5, 1.5, 0.25, -3.0], [], None, [2.0], [0.5], [1.0]], pa.list_(pa.float32()))),
        "f64s": ("Set(Float64)", pa.array([[1.5, 0.1, 1e300], [], None, [2.0, 2.0], [0.5], [1.0]])),
        "flags": ("Set(Bool)", pa.array([[True, True, False], [], None, [False], [True], [True, False]])),
        "raws": ("Set(Bytes)", pa.array([[b"a", b"a", b"b"], [], None, [b"x"], [b"y"], [b""]], pa.list_(pa.binary()))),
        "seens": ("Set(UnixTimestamp)", pa.array([[T0, T0, T0 + timedelta(seconds=3)], [], None, [None, T0], [T0], [T0]], pa.list_(TS))),
        "uids": ("Set(Uuid)", pa.array([[U1, U1, U2], [], None, [None, U1], [U2], [U1]])),
        "tuids": ("Set(TimeUuid)", pa.array([[U2], [], None, [U2], [U2], [U2]])),
        "decs": ("Set(Decimal)", pa.array([["1.5", "1.5", "2"], [], None, [None, "3"], ["0"], ["1"]])),
    },
    "objects": {
        "meta": ("Map", pa.array([{"a": "1", "b": "x"}, {"a": None, "b": ""}, None, {"a": "q", "b": "w"}, {"a": "", "b": ""}, {"a": "ü", "b": "z"}], _struct(a=pa.string(), b=pa.string()))),
        "meta_json": ("Map", pa.array(['{"a": 1, "b": [1, 2], "c": {"d": true}, "e": null}', "{}", None, '{"f": 1.5, "g": [{"h": "i"}]}', '{"s": "t"}', '{"n": -3}'])),
        "conf": ("Json", pa.array(['{"max": 157, "zones": ["east"]}', "[]", None, '"s"', "1", "null"])),
        "conf_obj": ("Json", pa.array([{"a": "1", "b": 2}, None, {"a": "", "b": 0}, {"a": "x", "b": -1}, {"a": "y", "b": 1}, {"a": "z", "b": 3}], _struct(a=pa.string(), b=pa.int64()))),
        "profile": ("Struct({'name': String, 'age': String})", pa.array([{"name": "n", "age": "41"}, {"name": None, "age": ""}, None, {"name": "ü", "age": "1"}, {"name": "", "age": ""}, {"name": "m", "age": "2"}], _struct(name=pa.string(), age=pa.string()))),
        "typed": ("Struct({'n': Int64, 'f': Float64, 'b': Bool})", pa.array([{"n": 1, "f": 1.5, "b": True}, {"n": None, "f": None, "b": None}, None, {"n": 2**62, "f": -1.0, "b": False}, {"n": 0, "f": 0.0, "b": True}, {"n": 5, "f": 2.0, "b": False}], _struct(n=pa.int64(), f=pa.float64(), b=pa.bool_()))),
        "people": ("Array(Struct({'a': String}))", pa.array([[{"a": "1"}, {"a": "2"}], [], None, [{"a": None}], [{"a": "x"}], [{"a": ""}]], pa.list_(_struct(a=pa.string())))),
        "maps": ("Array(Map)", pa.array(['[{"a": "1"}, {"b": 2}]', None, "[]", '[{"c": [1]}]', '[{"d": {"e": "f"}}]', "[{}]"])),
        "grid": ("Array(Array(Int64))", pa.array([[[1, 2], [3]], [], None, [None, [4], []], [[5]], [[6, 7]]], pa.list_(pa.list_(pa.int64())))),
        "words": ("Array(Array(String))", pa.array([[["a"], ["b", "c"]], [], None, [None, []], [[""]], [["z"]]], pa.list_(pa.list_(pa.string())))),
        "bags": ("Array(Set(Int64))", pa.array([[[1, 2], [3]], None, [[2, 2, 1]], [], [[5]], [[6]]], pa.list_(pa.list_(pa.int64())))),
        "unique_lists": ("Set(Array(Int64))", pa.array([[[1, 2], [1, 2]], [], None, [[3]], [[4]], [[5, 6]]], pa.list_(pa.list_(pa.int64())))),
    },
    "big_ints": {
        "count": ("Int64", pa.array([2**53 + 1, None, 2**62 + 1, -(2**53) - 3, 5, 2**53], pa.int64())),
    },
    "vectors": {
        "emb": ("Array(Float32)", pa.array([[1, 2, 3], [0, 0, 0], None, [1, 1, 1], [2, 2, 2], [3, 3, 3]], pa.list_(pa.float32()))),
    },
    "bad_vectors": {
        "emb": ("Array(Float32)", pa.array([[1, 2, 3], [1, 2], None, [1, 1, 1], [2, 2, 2], [3, 3, 3]], pa.list_(pa.float32()))),
    },
}  # fmt: skip
VECTOR = "vector_index=True, vector_length=3"

DEFINITIONS = """
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, KafkaSource, StreamFeatureView
from feast.data_format import JsonFormat
from feast.types import *  # noqa: F403
from feast.value_type import ValueType

e = Entity(name="e", join_keys=["eid"], value_type=ValueType.INT64)


def view(name, fields, ttl=timedelta(days=2), entities=(e,), path=None):
    return FeatureView(
        name=name,
        entities=list(entities),
        ttl=ttl,
        schema=fields,
        source=FileSource(path=path or f"data/{name}.parquet", timestamp_field="event_timestamp"),
    )
"""


STREAMED = """
streamed = StreamFeatureView(
    name="streamed",
    entities=[e],
    ttl=timedelta(days=2),
    schema=[Field(name="x", dtype=Int64)],
    source=KafkaSource(
        name="plain_stream",
        kafka_bootstrap_servers="localhost:9092",
        topic="plain",
        timestamp_field="event_timestamp",
        batch_source=FileSource(path="data/entityless.parquet", timestamp_field="event_timestamp"),
        message_format=JsonFormat(schema_json="eid integer, event_timestamp timestamp, x integer"),
    ),
)
"""


def _definitions() -> str:
    lines = [DEFINITIONS]
    for name, columns in COLUMNS.items():
        fields = ", ".join(
            f"Field(name={c!r}, dtype={dtype}{', ' + VECTOR if 'vectors' in name else ''})"
            for c, (dtype, _) in columns.items()
        )
        lines.append(f"{name} = view({name!r}, [{fields}])")
    plain = "[Field(name='x', dtype=Int64)]"
    lines += [
        f"entityless = view('entityless', {plain}, entities=())",
        f"folder = view('folder', {plain}, path='data/folder')",
        f"hive = view('hive', {plain}, path='data/hive')",
        f"no_ttl = view('no_ttl', {plain}, ttl=None, path='data/entityless.parquet')",
        f"zero_ttl = view('zero_ttl', {plain}, ttl=timedelta(0), path='data/entityless.parquet')",
        STREAMED,
    ]
    return "\n".join(lines) + "\n"


def _plain(ids: list[int], hours: list[int], xs: list[int]) -> pa.Table:
    return pa.table(
        {
            "eid": pa.array(ids, pa.int64()),
            "event_timestamp": pa.array([T0 + timedelta(hours=h) for h in hours], TS),
            "x": pa.array(xs, pa.int64()),
        }
    )


def _write_data(data: Path) -> None:
    for name, columns in COLUMNS.items():
        table = pa.table(
            {
                "eid": pa.array(range(6), pa.int64()),
                "event_timestamp": pa.array([T0 + timedelta(hours=1)] * 6, TS),
                **{c: values for c, (_, values) in columns.items()},
            }
        )
        pq.write_table(table, data / f"{name}.parquet")
    pq.write_table(
        _plain([1, 2, 1, 3], [1, 2, 3, 4], [10, 20, 30, 40]), data / "entityless.parquet"
    )
    (data / "folder").mkdir()
    pq.write_table(_plain([1, 2], [1, 2], [10, 20]), data / "folder" / "a.parquet")
    pq.write_table(_plain([1, 3], [3, 4], [11, 31]), data / "folder" / "b.parquet")
    for day, table in (
        (f"{T0:%Y-%m-%d}", _plain([1, 2], [1, 2], [10, 20])),
        (f"{T0 + timedelta(days=1):%Y-%m-%d}", _plain([1, 3], [20, 21], [11, 31])),
    ):
        (data / "hive" / f"day={day}").mkdir(parents=True)
        pq.write_table(table, data / "hive" / f"day={day}" / "part-0.parquet")


def _make_repo(root: Path, port: int, key_version: int = 3) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "carrara_types_test_definitions.py").write_text(_definitions())
    (root / "feature_store.yaml").write_text(
        "project: alltypes\nregistry: data/registry.db\nprovider: local\n"
        f'online_store:\n    type: redis\n    connection_string: "127.0.0.1:{port}"\n'
        f"entity_key_serialization_version: {key_version}\n"
    )
    _write_data(root / "data")
    apply_repo(root)
    return root


@pytest.fixture(scope="module")
def types_repo(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisProcess) -> Path:
    return _make_repo(tmp_path_factory.mktemp("alltypes") / "repo", redis_server.port)


class Feast:
    """Feast's FeatureStore over a repo (one per repo: building it costs seconds)."""

    def __init__(self, repo: Path) -> None:
        with feast_context(repo):
            from feast import FeatureStore

            self.store = FeatureStore(repo_path=str(repo))
        self.repo = repo

    def materialize(self, views: list[str], start: datetime = START, end: datetime = END) -> None:
        self.store.refresh_registry()
        with feast_context(self.repo):
            self.store.materialize(start, end, feature_views=views)

    def online(self, refs: list[str], rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
        self.store.refresh_registry()
        with feast_context(self.repo):
            response = self.store.get_online_features(
                features=refs, entity_rows=rows, full_feature_names=True
            )
        return dict(response.to_dict())


@pytest.fixture(scope="module")
def feast(types_repo: Path) -> Feast:
    return Feast(types_repo)


@pytest.fixture(autouse=True)
def _clean_redis(redis_server: RedisProcess) -> Iterator[None]:
    redis.Redis.from_url(redis_server.url).flushall()
    yield
    redis.Redis.from_url(redis_server.url).flushall()


def _flush(url: str) -> None:
    redis.Redis.from_url(url).flushall()


def _comparable(raw: bytes) -> Any:
    from feast.protos.feast.types.Value_pb2 import Value

    if not raw:
        return raw
    value = Value.FromString(raw)
    kind = value.WhichOneof("val") or ""
    if kind.endswith("_set_val") and kind.split("_")[0] in (
        "string",
        "bytes",
        "uuid",
        "time",
        "unix",
        "decimal",
    ):
        return kind, sorted(getattr(value, kind).val)
    return value.SerializeToString(deterministic=True)


def _compare(by_feast: Snapshot, by_carrara: Snapshot) -> tuple[int, int]:
    """(values byte-identical, values equal only as messages); asserts everything else."""
    assert by_feast.keys() == by_carrara.keys()
    identical = reordered = 0
    for key, (fields, ttl) in by_feast.items():
        ours, our_ttl = by_carrara[key]
        assert ours.keys() == fields.keys(), key
        assert our_ttl == ttl, key
        for field, value in fields.items():
            if ours[field] == value:
                identical += 1
            else:
                assert not field.startswith(b"_ts:"), (key, field)
                assert _comparable(ours[field]) == _comparable(value), (key, field)
                reordered += 1
    return identical, reordered


@pytest.fixture(scope="module")
def states(types_repo: Path, feast: Feast, redis_server: RedisProcess) -> dict[str, Snapshot]:
    url = redis_server.url
    _flush(url)
    feast.materialize(list(COMPARED))
    by_feast = snapshot(url)
    _flush(url)
    materialize(types_repo, START, END, views=list(COMPARED))
    return {"feast": by_feast, "carrara": snapshot(url)}


def test_every_type_is_written_as_feast_writes_it(states: dict[str, Snapshot]) -> None:
    identical, reordered = _compare(states["feast"], states["carrara"])
    assert identical > 150
    assert reordered < 40  # maps, structs and string sets only


def test_feast_reads_every_type_carrara_wrote(
    types_repo: Path, feast: Feast, redis_server: RedisProcess
) -> None:
    refs = [
        f"{view}:{column}"
        for view in ("scalars", "lists", "sets", "objects")
        for column in COLUMNS[view]
    ]
    # row 3 holds the null elements, which Feast writes ("" and "None" for Uuid and Decimal
    # elements) but cannot read back; 6 is no entity
    rows = [{"eid": i} for i in (0, 1, 2, 4, 5, 6)]
    _flush(redis_server.url)
    feast.materialize(["scalars", "lists", "sets", "objects"])
    by_feast = feast.online(refs, rows)
    _flush(redis_server.url)
    materialize(types_repo, START, END, views=["scalars", "lists", "sets", "objects"])
    by_carrara = feast.online(refs, rows)
    for name, values in by_feast.items():
        if name.startswith("sets__"):
            assert [sorted(v, key=repr) if v else v for v in by_carrara[name]] == [
                sorted(v, key=repr) if v else v for v in values
            ], name
        else:
            assert by_carrara[name] == values, name
    assert by_carrara["objects__meta"][0] == {"a": "1", "b": "x"}
    assert by_carrara["scalars__dec"][0] == decimal.Decimal("1.500")


def test_entityless_folder_and_hive_sources_are_feast_s(states: dict[str, Snapshot]) -> None:
    dummy = b"\x01\x00\x00\x00\x02\x00\x00\x00\n\x00\x00\x00__dummy_id\x02\x00\x00\x00\x00\x00\x00\x00alltypes"
    fields = states["carrara"][dummy][0]
    assert codec.decode_value(fields[codec.field_name("entityless", "x")]) == 40  # the latest row
    for view in ("folder", "hive"):
        written = [k for k, (f, _) in states["carrara"].items() if codec.ts_field(view) in f]
        assert len(written) == 3, view


def test_int64_beyond_2_53_is_exact_where_feast_rounds_and_carrara_says_so(
    types_repo: Path, feast: Feast, redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    field = codec.field_name("big_ints", "count")
    feast.materialize(["big_ints"])
    by_feast = snapshot(redis_server.url)
    _flush(redis_server.url)
    with caplog.at_level(logging.WARNING):
        materialize(types_repo, START, END, views=["big_ints"])
    by_carrara = snapshot(redis_server.url)
    feast_values = sorted(int(codec.decode_value(f[field]) or 0) for f, _ in by_feast.values())  # type: ignore[call-overload]
    ours = sorted(int(codec.decode_value(f[field]) or 0) for f, _ in by_carrara.values())  # type: ignore[call-overload]
    assert {2**53 + 1, 2**62 + 1, -(2**53) - 3} <= set(ours)
    assert 2**53 + 1 not in feast_values  # Feast: 2**53, rounded through float64
    assert sum(a != b for a, b in zip(feast_values, ours, strict=True)) == 3
    warnings = [r.getMessage() for r in caplog.records if "2^53" in r.getMessage()]
    assert len(warnings) == 1
    assert "feature view 'big_ints', feature 'count'" in warnings[0]


def test_a_vector_feast_refuses_is_refused_before_anything_is_written(
    types_repo: Path, feast: Feast, redis_server: RedisProcess
) -> None:
    with pytest.raises(ValueError, match="Vector length 2 does not match expected 3"):
        feast.materialize(["bad_vectors"])
    _flush(redis_server.url)
    before = read_registry(RepoFiles.locate(types_repo).registry)
    with pytest.raises(DataError) as refused:
        materialize(types_repo, START, END, views=["scalars", "bad_vectors"])
    message = str(refused.value)
    assert "feature view 'bad_vectors', feature 'emb'" in message
    assert "eid=1" in message
    assert "vector_length 3" in message
    assert snapshot(redis_server.url) == {}  # scalars, checked first, were not written either
    assert read_registry(RepoFiles.locate(types_repo).registry) == before


def test_ttl_none_and_ttl_0_stay_apart_and_start_incremental_runs_where_feast_does(
    types_repo: Path, tmp_path: Path, redis_server: RedisProcess
) -> None:
    plan = ensure_plan(types_repo)
    assert plan.feature_views["no_ttl"].ttl_s is None
    assert plan.feature_views["zero_ttl"].ttl_s == 0
    feast_copy = shutil.copytree(types_repo, tmp_path / "feast_copy")
    carrara_copy = shutil.copytree(types_repo, tmp_path / "carrara_copy")
    now = datetime.now(UTC)
    other = Feast(feast_copy)
    with feast_context(feast_copy):
        other.store.materialize_incremental(now, feature_views=["no_ttl", "zero_ttl"])
    other.store.refresh_registry()
    report = materialize(carrara_copy, end=now, incremental=True, views=["no_ttl", "zero_ttl"])
    for view in report.views:
        feast_start = other.store.get_feature_view(view.view).materialization_intervals[-1][0]
        assert abs(view.start - now + timedelta(weeks=52)) < timedelta(minutes=1), view.view
        assert abs(view.start - feast_start) < timedelta(minutes=1), view.view
    until = materialized_until(read_registry(RepoFiles.locate(carrara_copy).registry), "alltypes")
    assert (until["no_ttl"], until["zero_ttl"]) == (now, now)


@pytest.mark.parametrize("key_version", [1, 2])
def test_older_entity_key_versions_are_written_as_feast_writes_them(
    key_version: int, tmp_path: Path, redis_server: RedisProcess
) -> None:
    repo = _make_repo(tmp_path / f"v{key_version}", redis_server.port, key_version)
    assert ensure_plan(repo).entity_key_serialization_version == key_version
    views = ["scalars", "entityless"]
    Feast(repo).materialize(views)
    by_feast = snapshot(redis_server.url)
    _flush(redis_server.url)
    materialize(repo, START, END, views=views)
    by_carrara = snapshot(redis_server.url)
    _compare(by_feast, by_carrara)
    if key_version == 2:  # no key count, no name lengths: "eid" right after the STRING tag
        assert any(k.startswith(b"\x02\x00\x00\x00eid\x04\x00\x00\x00\x08") for k in by_carrara)
    else:  # version 1 packs Int64 keys in 4 bytes
        assert any(k.startswith(b"\x02\x00\x00\x00eid\x04\x00\x00\x00\x04") for k in by_carrara)


def _as_served(value: Any) -> Any:
    """A value of Feast's `to_dict()` as GetOnlineFeatures carries it: timestamps as epoch
    seconds, uuids and decimals as text, sets as sorted lists (the wire keeps stored order)."""
    if isinstance(value, datetime):
        return int(value.timestamp())
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, set):
        return sorted((_as_served(v) for v in value), key=repr)
    if isinstance(value, list):
        return [_as_served(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_served(v) for k, v in value.items()}
    return value


def test_get_online_features_serves_every_type_as_feast_returns_it(
    types_repo: Path, feast: Feast, redis_server: RedisProcess, tmp_path: Path
) -> None:
    from serving.client import PredictionClient, python_values
    from serving.online.server import Server, ServerSettings

    views = ("scalars", "lists", "sets", "objects", "entityless")
    refs = [f"{v}:{c}" for v in views[:4] for c in COLUMNS[v]] + ["entityless:x"]
    ids = [0, 1, 2, 4, 5, 6]  # 3: null elements Feast cannot read back; 6: no entity
    _flush(redis_server.url)
    materialize(types_repo, START, END, views=list(views))
    by_feast = feast.online(refs, [{"eid": i} for i in ids])
    settings = ServerSettings(
        repo=types_repo, registry=tmp_path / "models", port=0, redis_url=redis_server.url
    )
    server = Server(settings)
    server.start()
    try:
        with PredictionClient(f"127.0.0.1:{server.port}", timeout_s=30) as client:
            response = client.online_features({"eid": ids}, features=refs)
    finally:
        server.stop()
    ours = {c.name: python_values(c) for c in response.features}
    assert ours.keys() == {k for k in by_feast if k != "eid"}
    for name, values in ours.items():
        expected = [_as_served(v) for v in by_feast[name]]
        if name.startswith("sets__"):
            values = [sorted(v, key=repr) if v else v for v in values]
        assert values == expected, name
    assert ours["entityless__x"] == [40] * len(ids)  # Feast's one row, whatever the entity
    assert ours["objects__typed"][0] == {"n": 1, "f": 1.5, "b": True}
