"""The first repository a Feast user makes: `feast init`'s template, end to end, untouched but
for its online store (Redis instead of SQLite).

Its definitions and data are Feast's, not ours: pandas-mode on-demand views, a push source,
a label view, `enable_validation=True`, and `Map`, `Json` and `Struct` features. Carrara must
apply it, say which constructs it cannot serve, materialize it exactly as `feast materialize`
does, and leave bytes Feast's `get_online_features` reads back as Feast's own.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from serving.batch.materialize import materialize
from serving.cli import main
from serving.repo.compile import apply_repo, feast_context
from serving.repo.plan import RepoFiles, load_plan
from serving.store.redis_process import RedisProcess
from tests.helpers import Snapshot, run_python, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.slow]

END = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
START = END - timedelta(days=60)  # the template's data: the last 15 days, hourly
VIEWS = ("driver_hourly_stats", "driver_hourly_stats_fresh")
FEATURES: tuple[str, ...] = ("conv_rate", "acc_rate", "avg_daily_trips", "driver_metadata")
FEATURES += ("driver_config", "driver_profile")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisProcess) -> Path:
    """`feast init` in a temporary folder (Feast writes its own data file), pointed at Redis."""
    root = tmp_path_factory.mktemp("feast_init")
    run = run_python(["-m", "feast.cli.cli", "init", "starter"], timeout_s=300, cwd=root)
    assert run.returncode == 0, run.stderr[-3000:]
    repo = root / "starter" / "feature_repo"
    config = (repo / "feature_store.yaml").read_text()
    redis_store = (
        f'online_store:\n    type: redis\n    connection_string: "127.0.0.1:{redis_server.port}"\n'
    )
    config, replaced = re.subn(r"online_store:\n(?:    .*\n)+", redis_store, config)
    assert replaced == 1, config
    (repo / "feature_store.yaml").write_text(config)
    return repo


@pytest.fixture(scope="module")
def applied(template: Path) -> Path:
    apply_repo(template)
    return template


@pytest.fixture(scope="module")
def feast_store(applied: Path) -> Any:
    with feast_context(applied):
        from feast import FeatureStore

        return FeatureStore(repo_path=str(applied))


@pytest.fixture(autouse=True)
def _clean_redis(redis_server: RedisProcess) -> Iterator[None]:
    redis.Redis.from_url(redis_server.url).flushall()
    yield
    redis.Redis.from_url(redis_server.url).flushall()


def _feast_materialize(store: Any, repo: Path) -> None:
    store.refresh_registry()
    with feast_context(repo):
        store.materialize(START, END, feature_views=list(VIEWS))


def _online(store: Any, repo: Path, driver_ids: list[int]) -> dict[str, list[Any]]:
    store.refresh_registry()
    refs = [f"{view}:{feature}" for view in VIEWS for feature in FEATURES]
    with feast_context(repo):
        response = store.get_online_features(
            features=refs,
            entity_rows=[{"driver_id": d} for d in driver_ids],
            full_feature_names=True,
        )
    return dict(response.to_dict())


def _canonical(raw: bytes) -> bytes:
    """Value bytes with map entries in key order: Feast's own order changes per process."""
    from feast.protos.feast.types.Value_pb2 import Value

    return Value.FromString(raw).SerializeToString(deterministic=True) if raw else raw


def assert_same_values(feast: Snapshot, carrara: Snapshot) -> int:
    """Same keys, fields, TTLs; values byte-identical but for map entry order. Returns how
    many values were byte-identical as they stand."""
    assert feast.keys() == carrara.keys()
    identical = 0
    for key, (fields, ttl) in feast.items():
        ours, our_ttl = carrara[key]
        assert ours.keys() == fields.keys(), key
        assert abs(our_ttl - ttl) <= 5, key
        for field, value in fields.items():
            if ours[field] == value:
                identical += 1
            else:
                assert not field.startswith(b"_ts:"), (key, field)
                assert _canonical(ours[field]) == _canonical(value), (key, field)
    return identical


def test_carrara_applies_and_materializes_the_template_as_it_is(
    applied: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    redis_server: RedisProcess,
) -> None:
    plan = load_plan(RepoFiles.locate(applied))
    assert set(plan.feature_views) >= set(VIEWS)
    assert plan.feature_views["driver_hourly_stats"].feature("driver_metadata").dtype == "Map"
    assert plan.on_demand_views["transformed_conv_rate"].mode == "pandas"
    assert not {u.view for u in plan.unsupported} & set(plan.on_demand_views)
    with caplog.at_level(logging.WARNING):
        code = main(
            [
                "materialize",
                "--repo",
                str(applied),
                "--start",
                START.isoformat(),
                "--end",
                END.isoformat(),
            ]
        )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert all(view in out for view in VIEWS)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "transformed_conv_rate" not in warned  # pandas-mode views are served now
    assert len(snapshot(redis_server.url)) == 5  # the template's five drivers, both views


def test_carrara_writes_what_feast_materialize_writes(
    applied: Path, feast_store: Any, redis_server: RedisProcess
) -> None:
    _feast_materialize(feast_store, applied)
    by_feast = snapshot(redis_server.url)
    redis.Redis.from_url(redis_server.url).flushall()
    report = materialize(applied, START, END)
    assert {v.view for v in report.views} == set(VIEWS)
    by_carrara = snapshot(redis_server.url)
    identical = assert_same_values(by_feast, by_carrara)
    assert identical >= 5 * 2 * 4  # every value but maps and structs, at the least
    assert len(by_feast) == 5


def test_feast_reads_what_carrara_wrote(
    applied: Path, feast_store: Any, redis_server: RedisProcess
) -> None:
    drivers = [1001, 1002, 1003, 1004, 1005, 424242]
    _feast_materialize(feast_store, applied)
    by_feast = _online(feast_store, applied, drivers)
    redis.Redis.from_url(redis_server.url).flushall()
    materialize(applied, START, END)
    by_carrara = _online(feast_store, applied, drivers)
    assert by_carrara == by_feast
    metadata = by_carrara["driver_hourly_stats__driver_metadata"]
    assert isinstance(metadata[0], dict)
    assert metadata[0].keys() == {"vehicle_type", "rating"}
    assert metadata[-1] is None  # an unknown driver
    assert isinstance(by_carrara["driver_hourly_stats__driver_config"][0], str | dict)


# --- serving: Carrara's GetOnlineFeatures and Predict against Feast's get_online_features ---

DRIVERS = [1001, 1002, 1003, 1004, 1005, 424242]  # the last: no row in the store
VALS = {"val_to_add": [1000, 1001, 1002, 1003, 1004, 1005], "val_to_add_2": [2000, 7, -3, 0, 5, 9]}


@pytest.fixture(scope="module")
def template_server(applied: Path, redis_server: RedisProcess, tmp_path_factory):
    from serving.online.server import Server, ServerSettings

    registry = tmp_path_factory.mktemp("template_models") / "models"
    _register_template_model(applied, registry, tmp_path_factory.mktemp("template_model"))
    served = Server(
        ServerSettings(
            repo=applied, registry=registry, port=0, redis_url=redis_server.url, threads=2
        )
    )
    served.start()
    yield served
    served.stop()


def _register_template_model(repo: Path, registry: Path, folder: Path) -> None:
    """A LightGBM model over the template's stored and pandas on-demand features."""
    import lightgbm as lgb
    import numpy as np

    names = [
        "driver_hourly_stats__conv_rate",
        "transformed_conv_rate__conv_rate_plus_val1",
        "transformed_conv_rate__conv_rate_plus_val2",
    ]
    rng = np.random.default_rng(3)
    x = np.column_stack([rng.random(400), rng.random(400) * 3000, rng.normal(size=400) * 50])
    y = x[:, 0] * 2 + x[:, 1] / 1000 - x[:, 2] / 100
    params = {"objective": "regression", "verbose": -1, "min_data_in_leaf": 5}
    booster = lgb.train(params, lgb.Dataset(x, y, feature_name=names), num_boost_round=20)
    model = folder / "model.txt"
    booster.save_model(str(model))
    args = ["models", "register", "conv", "--model-file", str(model)]
    args += ["--feature-service", "driver_activity_v1", "--repo", str(repo)]
    assert main([*args, "--registry", str(registry)]) == 0


def _feast_online(store: Any, repo: Path, features: Any) -> dict[str, list[Any]]:
    store.refresh_registry()
    rows = [
        {"driver_id": d, "val_to_add": a, "val_to_add_2": b}
        for d, a, b in zip(DRIVERS, VALS["val_to_add"], VALS["val_to_add_2"], strict=True)
    ]
    with feast_context(repo):
        if isinstance(features, str):
            features = store.get_feature_service(features)
        response = store.get_online_features(
            features=features, entity_rows=rows, full_feature_names=True
        )
    found = dict(response.to_dict())
    for key in ("driver_id", "val_to_add", "val_to_add_2"):
        found.pop(key, None)
    return found


def _carrara_online(port: int, service: str = "", refs: tuple[str, ...] = ()) -> Any:
    from serving.client import PredictionClient, python_values

    with PredictionClient(f"127.0.0.1:{port}", timeout_s=30) as client:
        response = client.online_features(
            {"driver_id": DRIVERS}, feature_service=service, features=refs, request_data=VALS
        )
    return {c.name: python_values(c) for c in response.features}, response


@pytest.mark.parametrize(
    "service",
    ["driver_activity_v1", "driver_activity_v2", "driver_activity_v3", "refs"],
)
def test_get_online_features_equals_feasts_value_for_value(
    applied: Path, feast_store: Any, template_server: Any, service: str
) -> None:
    """The template's feature services (pandas on-demand views with request data, Map, Json
    and Struct features) and test_workflow's refs: Carrara's values are Feast's own."""
    _feast_materialize(feast_store, applied)
    materialize(applied, START, END)  # the same bytes (above): either writer will do
    refs = (
        "driver_hourly_stats:acc_rate",
        "driver_hourly_stats:driver_metadata",
        "driver_hourly_stats:driver_config",
        "driver_hourly_stats:driver_profile",
        "transformed_conv_rate:conv_rate_plus_val1",
        "transformed_conv_rate:conv_rate_plus_val2",
    )
    if service == "refs":
        feast = _feast_online(feast_store, applied, list(refs))
        ours, response = _carrara_online(template_server.port, refs=refs)
    else:
        feast = _feast_online(feast_store, applied, service)
        ours, response = _carrara_online(template_server.port, service=service)
    assert ours == feast
    assert ours  # and not trivially: every kind of value is there
    types = {c.name: c.feast_type for c in response.features}
    if service == "driver_activity_v2":
        assert types["driver_hourly_stats__driver_metadata"] == "Map"
        assert types["driver_hourly_stats__driver_profile"].startswith("Struct(")
        assert isinstance(ours["driver_hourly_stats__driver_metadata"][0], dict)
    plus = next(v for k, v in ours.items() if k.endswith("conv_rate_plus_val1"))
    assert all(isinstance(v, float) for v in plus[:5])


def test_predict_scores_the_pandas_on_demand_outputs_as_feast_computes_them(
    applied: Path, feast_store: Any, template_server: Any
) -> None:
    import numpy as np

    from serving.client import PredictionClient
    from serving.models.registry import ModelRegistry

    _feast_materialize(feast_store, applied)
    feast = _feast_online(feast_store, applied, "driver_activity_v1")
    names = [
        "driver_hourly_stats__conv_rate",
        "transformed_conv_rate__conv_rate_plus_val1",
        "transformed_conv_rate__conv_rate_plus_val2",
    ]
    matrix = np.array([[np.nan if v is None else v for v in feast[n]] for n in names]).T
    booster = ModelRegistry(template_server.settings.registry).load("conv").booster
    with PredictionClient(f"127.0.0.1:{template_server.port}", timeout_s=30) as client:
        reply = client.predict("conv", {"driver_id": DRIVERS}, VALS, return_features=True)
    assert list(reply.feature_names) == names
    ours = np.array([list(row.values) for row in reply.features])
    np.testing.assert_array_equal(ours[:5], matrix[:5])
    np.testing.assert_array_equal(np.array(reply.predictions), booster.predict(ours))
    assert list(reply.missing_features) == [0, 0, 0, 0, 0, 1]  # the unknown driver's conv_rate


# --- push: Carrara's Push RPC and `carrara push` against Feast's store.push ---------------

PUSHED_AT = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def _pushed_rows(shift: timedelta = timedelta(0)) -> dict[str, list[Any]]:
    """Rows for the template's push source: two known drivers and a new one, a driver twice
    (its later row wins), every kind of feature the fresh view holds."""
    when = [PUSHED_AT + shift + timedelta(seconds=s) for s in (0, 1, 2, 3)]
    return {
        "driver_id": [1001, 1002, 9000, 1001],
        "event_timestamp": when,
        "conv_rate": [0.25, 0.5, 0.75, 0.125],
        "acc_rate": [0.5, 0.25, 1.0, 0.0],
        "avg_daily_trips": [10, 20, 30, 40],
        "driver_metadata": [{"vehicle_type": "suv", "rating": "4.5"}] * 3
        + [{"vehicle_type": "van", "rating": "1"}],
        "driver_config": ['{"max_distance_km": 5}', "[]", '{"a": [1, 2]}', '"x"'],
        "driver_profile": [{"name": f"n{i}", "age": str(30 + i)} for i in range(4)],
    }


def _wire_rows(rows: dict[str, list[Any]]) -> dict[str, list[Any]]:
    micros = [int(t.timestamp() * 1_000_000) for t in rows["event_timestamp"]]
    return {**rows, "event_timestamp": micros}


def _feast_push(store: Any, repo: Path, rows: dict[str, list[Any]]) -> None:
    import pandas as pd

    store.refresh_registry()
    with feast_context(repo):  # Feast's push requires the source's created column
        store.push(
            "driver_stats_push_source", pd.DataFrame({**rows, "created": rows["event_timestamp"]})
        )


def test_push_writes_what_feasts_push_writes(
    applied: Path, feast_store: Any, template_server: Any, redis_server: RedisProcess
) -> None:
    from serving.client import PredictionClient

    rows = _pushed_rows()
    _feast_push(feast_store, applied, {k: v[:3] for k, v in rows.items()})  # Feast: one per key
    by_feast = snapshot(redis_server.url)
    redis.Redis.from_url(redis_server.url).flushall()
    with PredictionClient(f"127.0.0.1:{template_server.port}", timeout_s=30) as client:
        reply = client.push("driver_stats_push_source", _wire_rows(rows))
        assert (reply.rows_written, reply.rows_older_than_stored) == (3, 0)
        later = _wire_rows(_pushed_rows(timedelta(seconds=10)))
        again = client.push("driver_stats_push_source", {k: v[:3] for k, v in later.items()})
        older = client.push("driver_stats_push_source", _wire_rows(rows))
    assert (again.rows_written, again.rows_older_than_stored) == (3, 0)
    assert (older.rows_written, older.rows_older_than_stored) == (0, 3)
    redis.Redis.from_url(redis_server.url).flushall()
    with PredictionClient(f"127.0.0.1:{template_server.port}", timeout_s=30) as client:
        client.push("driver_stats_push_source", _wire_rows({k: v[:3] for k, v in rows.items()}))
    assert assert_same_values(by_feast, snapshot(redis_server.url)) >= 3 * 4
    assert len(by_feast) == 3
    fresh = {"view": "driver_hourly_stats_fresh"}
    registry = template_server.metrics.registry
    assert registry.get_sample_value("carrara_feature_freshness_seconds_count", fresh) >= 9
    age = registry.get_sample_value("carrara_feature_freshness_seconds_sum", fresh)
    assert age > 9 * 60  # the rows' event times are 5 minutes and more in the past


def test_carrara_push_from_a_file_writes_what_the_rpc_writes(
    applied: Path,
    template_server: Any,
    redis_server: RedisProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from serving.client import PredictionClient

    rows = _pushed_rows()
    with PredictionClient(f"127.0.0.1:{template_server.port}", timeout_s=30) as client:
        client.push("driver_stats_push_source", _wire_rows(rows))
    by_rpc = snapshot(redis_server.url)
    redis.Redis.from_url(redis_server.url).flushall()
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pydict(rows), path)
    args = ["push", "--repo", str(applied), "--source", "driver_stats_push_source"]
    assert main([*args, "--input", str(path), "--redis-url", redis_server.url]) == 0
    assert "3 rows written, 0 older than stored" in capsys.readouterr().out
    assert snapshot(redis_server.url) == by_rpc


def test_bad_pushes_name_the_source_column_and_row(template_server: Any) -> None:
    import grpc

    from serving.client import PredictionClient

    rows = _wire_rows(_pushed_rows())
    future = {**rows, "event_timestamp": [rows["event_timestamp"][0] + 3_600_000_000] * 4}
    cases = [
        ("nope", rows, grpc.StatusCode.NOT_FOUND, "no push source 'nope'"),
        ("driver_stats_push_source", {k: v for k, v in rows.items() if k != "conv_rate"},
         grpc.StatusCode.INVALID_ARGUMENT, "columns.conv_rate is missing"),
        ("driver_stats_push_source", {**rows, "driver_id": ["a", "b", "c", "d"]},
         grpc.StatusCode.INVALID_ARGUMENT, "columns.driver_id must be int64"),
        ("driver_stats_push_source", {**rows, "extra": [1, 2, 3, 4]},
         grpc.StatusCode.INVALID_ARGUMENT, "'extra' is not a column of this push source"),
        ("driver_stats_push_source", future, grpc.StatusCode.INVALID_ARGUMENT,
         "columns.event_timestamp row 0: event time"),
        ("driver_stats_push_source", {**rows, "driver_config": ["{", "1", "2", "3"]},
         grpc.StatusCode.INVALID_ARGUMENT, "columns.driver_config"),
    ]  # fmt: skip
    with PredictionClient(f"127.0.0.1:{template_server.port}", timeout_s=30) as client:
        for source, columns, code, needle in cases:
            with pytest.raises(grpc.RpcError) as info:
                client.push(source, columns)
            assert info.value.code() == code, needle
            assert needle in info.value.details(), info.value.details()


def test_push_offline_appends_to_the_batch_source(
    applied: Path, template_server: Any, redis_server: RedisProcess
) -> None:
    """Last in the module: it grows the template's data file (both materializes read it)."""
    import pyarrow.parquet as pq

    from serving.client import PredictionClient
    from serving.pb.carrara.v1 import prediction_pb2 as pb

    source = applied / "data" / "driver_stats.parquet"
    before = pq.read_table(source)
    with PredictionClient(f"127.0.0.1:{template_server.port}", timeout_s=30) as client:
        reply = client.push("driver_stats_push_source", _wire_rows(_pushed_rows()), pb.OFFLINE)
    assert (reply.rows_written, reply.rows_older_than_stored) == (0, 0)
    assert snapshot(redis_server.url) == {}  # offline only
    after = pq.read_table(source)
    assert after.schema == before.schema
    assert after.num_rows == before.num_rows + 4
    added = after.slice(before.num_rows).to_pylist()
    assert [r["driver_id"] for r in added] == [1001, 1002, 9000, 1001]
    assert added[0]["driver_metadata"] == {"vehicle_type": "suv", "rating": "4.5"}
    assert all(r["created"] is not None for r in added)
