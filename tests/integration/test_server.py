"""The prediction service through a real stub, against a real server, Redis and registry."""

from __future__ import annotations

import math
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serving.client import PredictionClient, to_values
from serving.errors import ModelError
from serving.models.aliases import pushed, read_aliases, write_aliases
from serving.models.registry import ModelRegistry
from serving.online.server import Server
from serving.pb.carrara.v1 import prediction_pb2 as pb
from serving.store import encoding
from serving.store.online_store import OnlineStore
from serving.store.redis_process import RedisProcess
from serving.store.settings import RedisSettings
from serving.store.write_guard import RowBatch
from tests.helpers import RPC_TIMEOUT_S, SERVER_MAX_ROWS, WORLD_END, run_python, wait_until

# Every RPC here carries a deadline (RPC_TIMEOUT_S), so a hung call fails in seconds. The
# timeout bounds the rest, fixtures included: run alone, the first test also builds the
# session's world and models (~40 s on a busy 2-core machine).
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

DRIVER_FEATURES = 7  # driver_stats in eta_v1


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[PredictionClient]:
    with PredictionClient(f"127.0.0.1:{server.port}", timeout_s=RPC_TIMEOUT_S) as client:
        yield client


@pytest.fixture(scope="module")
def trips(applied_repo: Path) -> pd.DataFrame:
    """The last 20 trips of the test world whose driver's latest snapshot has every feature.

    The sample world leaves `avg_rating` null in ~1 % of driver snapshots (new drivers: no
    rating yet). Which drivers, in the last hour, depends on the hour the world ends (the
    generator's draws follow the hour of day), so the last 20 trips sometimes include one:
    served, rightly, with 1 feature missing. These are complete, so that "nothing missing"
    below is exact at any time of day; a null value is tested on its own
    (test_a_null_feature_value_counts_as_missing).
    """
    trips = pd.read_parquet(applied_repo / "data" / "trips.parquet")
    drivers = pd.read_parquet(applied_repo / "data" / "driver_stats.parquet")
    latest = drivers.sort_values("event_timestamp").groupby("driver_id").tail(1)
    complete = latest.loc[latest.notna().all(axis=1), "driver_id"]
    chosen = trips[trips.driver_id.isin(complete)].tail(20)
    assert len(chosen) == 20
    return chosen


def eta_inputs(
    trips: pd.DataFrame,
) -> tuple[dict[str, list[int]], dict[str, list[float] | list[int]]]:
    entities = {
        c: trips[c].astype(int).tolist() for c in ("driver_id", "pickup_zone_id", "dropoff_zone_id")
    }
    request: dict[str, list[float] | list[int]] = {
        c: trips[c].astype(float).tolist()
        for c in ("pickup_lat", "pickup_lon", "dropoff_lat", "dropoff_lon")
    }
    request["request_ts_s"] = trips["request_ts_s"].astype(int).tolist()
    return entities, request


def booster(registry_root: Path, ref: str) -> lgb.Booster:
    return ModelRegistry(registry_root).load(ref).booster


def test_eta_scores_equal_booster_predict_on_the_served_vector(
    client: PredictionClient, trips: pd.DataFrame, served_registry: Path
) -> None:
    entities, request = eta_inputs(trips)
    reply = client.predict("eta", entities, request, return_features=True)
    assert reply.model == "eta"
    assert reply.model_version == "1"
    features = np.array([list(row.values) for row in reply.features])
    assert features.shape == (len(trips), len(reply.feature_names))
    expected = booster(served_registry, "eta:1").predict(features)
    np.testing.assert_array_equal(np.array(reply.predictions), expected)
    assert list(reply.missing_features) == [0] * len(trips)


def test_single_row_takes_the_same_answer_as_a_batch(
    client: PredictionClient, trips: pd.DataFrame
) -> None:
    entities, request = eta_inputs(trips)
    batch = client.predict("eta", entities, request).predictions
    for i in (0, 7):
        one = client.predict(
            "eta",
            {k: v[i : i + 1] for k, v in entities.items()},
            {k: v[i : i + 1] for k, v in request.items()},
        )
        assert one.predictions[0] == batch[i]


def test_served_features_are_the_latest_rows_of_the_parquet(
    client: PredictionClient, applied_repo: Path, trips: pd.DataFrame
) -> None:
    entities, request = eta_inputs(trips.head(3))
    reply = client.predict("eta", entities, request, return_features=True)
    names = list(reply.feature_names)
    drivers = pd.read_parquet(applied_repo / "data" / "driver_stats.parquet")
    for row, driver_id in enumerate(entities["driver_id"]):
        latest = drivers[drivers.driver_id == driver_id].sort_values("event_timestamp").iloc[-1]
        served = reply.features[row].values
        assert served[names.index("driver_stats__avg_speed_kph_7d")] == float(
            np.float32(latest.avg_speed_kph_7d)
        )
        assert served[names.index("driver_stats__trips_today")] == latest.trips_today
    distance = reply.features[0].values[names.index("trip_geometry__haversine_km")]
    assert 0 < distance < 20


def test_unknown_driver_is_scored_with_its_features_missing(
    client: PredictionClient, trips: pd.DataFrame
) -> None:
    entities, request = eta_inputs(trips.head(1))
    entities["driver_id"] = [10**12]
    reply = client.predict("eta", entities, request, return_features=True)
    driver_columns = [
        i for i, n in enumerate(reply.feature_names) if n.startswith("driver_stats__")
    ]
    assert reply.missing_features[0] == len(driver_columns) == DRIVER_FEATURES
    assert all(math.isnan(reply.features[0].values[i]) for i in driver_columns)
    assert math.isfinite(reply.predictions[0])


def write_driver(server: Server, driver_id: int, event_us: int, values: dict[str, object]) -> None:
    """One driver_stats row straight into the server's Redis, as materialize would write it."""
    plan = server.predictor.plan
    view = plan.feature_view("driver_stats")
    key = encoding.encode_entity_keys(["driver_id"], ["Int64"], [[driver_id]], plan.project)
    store = OnlineStore(RedisSettings(url=server.settings.redis_url or ""), plan.project)
    try:
        store.write_view(
            view.name,
            [f.name for f in view.features],
            [
                RowBatch(
                    keys=key,
                    event_ts=encoding.encode_timestamps([event_us]),
                    values=[
                        encoding.encode_values(f.dtype, [values[f.name]]) for f in view.features
                    ],
                )
            ],
        )
    finally:
        store.close()


def test_stale_features_count_as_missing(
    client: PredictionClient, server: Server, trips: pd.DataFrame
) -> None:
    driver_id = 10**9
    two_days_ago = int((time.time() - 2 * 86_400) * 1e6)
    view = server.predictor.plan.feature_view("driver_stats")
    write_driver(
        server,
        driver_id,
        two_days_ago,
        {f.name: None if f.dtype == "String" else 1 for f in view.features},
    )
    entities, request = eta_inputs(trips.head(1))
    entities["driver_id"] = [driver_id]
    reply = client.predict("eta", entities, request)
    assert reply.missing_features[0] == DRIVER_FEATURES  # ttl is 26 h: every one is stale


def test_a_null_feature_value_counts_as_missing(
    client: PredictionClient, server: Server, trips: pd.DataFrame
) -> None:
    """A fresh row whose avg_rating is null (as the sample world has for new drivers)."""
    driver_id = 10**9 + 1
    view = server.predictor.plan.feature_view("driver_stats")
    values: dict[str, object] = {
        f.name: "economy" if f.dtype == "String" else 1 for f in view.features
    }
    values["avg_rating"] = None
    write_driver(server, driver_id, int(WORLD_END.timestamp() * 1e6), values)
    entities, request = eta_inputs(trips.head(1))
    entities["driver_id"] = [driver_id]
    reply = client.predict("eta", entities, request, return_features=True)
    assert reply.missing_features[0] == 1
    names = list(reply.feature_names)
    assert math.isnan(reply.features[0].values[names.index("driver_stats__avg_rating")])
    assert reply.features[0].values[names.index("driver_stats__trips_today")] == 1


def test_pricing_needs_only_its_own_inputs(client: PredictionClient) -> None:
    reply = client.predict(
        "pricing@production", {"zone_id": [1, 2, 3]}, {"request_ts_s": [int(time.time())] * 3}
    )
    assert len(reply.predictions) == 3
    assert all(1.0 <= p <= 4.0 for p in reply.predictions)


def test_list_models_is_enough_to_build_a_valid_request(client: PredictionClient) -> None:
    models = {m.name: m for m in client.list_models().models}
    assert set(models) == {"eta", "pricing"}
    eta = models["eta"]
    assert eta.feature_service == "eta_v1"
    assert eta.aliases["production"] == "1"
    assert {(i.name, i.type) for i in eta.entities} == {
        ("driver_id", pb.INT64),
        ("pickup_zone_id", pb.INT64),
        ("dropoff_zone_id", pb.INT64),
    }
    assert ("pickup_lat", pb.DOUBLE) in {(i.name, i.type) for i in eta.request_data}
    sample: dict[int, list[int] | list[float]] = {pb.INT64: [1], pb.DOUBLE: [44.0]}
    reply = client.predict(
        "eta",
        {i.name: sample[i.type] for i in eta.entities},
        {i.name: sample[i.type] for i in eta.request_data},
    )
    assert len(reply.predictions) == 1


def test_get_online_features_by_service_and_by_refs(client: PredictionClient) -> None:
    missing = rpc_error(
        lambda: client.online_features({"zone_id": [1, 10**9]}, feature_service="pricing_v1")
    )  # its on-demand views take request data, as Feast's get_online_features requires
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_data.request_ts_s is missing" in missing.details()
    noon = 1_700_000_000 - 1_700_000_000 % 86_400 + 12 * 3600  # a Tuesday, 12:00 UTC
    reply = client.online_features(
        {"zone_id": [1, 10**9]},
        feature_service="pricing_v1",
        request_data={"request_ts_s": [noon, noon + 86_400 * 4]},
    )
    columns = {c.name: c for c in reply.features}
    hour = columns["request_time__hour_of_day"]  # computed, as Feast computes it
    assert list(hour.values.int64_values.values) == [12, 12]
    assert list(columns["request_time__is_weekend"].values.int64_values.values) == [0, 1]
    assert list(hour.statuses) == [pb.PRESENT, pb.PRESENT]
    surge = columns["zone_stats__surge_15m"]
    assert surge.type == pb.DOUBLE
    assert list(surge.statuses) == [pb.PRESENT, pb.MISSING]
    assert surge.event_timestamps_us[0] > 0
    assert surge.event_timestamps_us[1] == 0
    by_ref = client.online_features({"driver_id": [1]}, features=["driver_stats:vehicle_type"])
    (vehicle,) = by_ref.features
    assert vehicle.name == "driver_stats__vehicle_type"
    assert vehicle.values.string_values.values[0] in {"economy", "comfort", "xl", "moto"}


def rpc_error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value


@pytest.mark.parametrize(
    ("model", "needle"),
    [("nope", "'nope'"), ("eta@canary", "'canary'"), ("eta:99", "version 99")],
)
def test_unknown_model_alias_or_version_is_not_found(
    client: PredictionClient, model: str, needle: str
) -> None:
    error = rpc_error(lambda: client.predict(model, {"zone_id": [1]}))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert needle in error.details()


def test_bad_requests_are_invalid_argument_naming_the_field(
    client: PredictionClient, trips: pd.DataFrame
) -> None:
    entities, request = eta_inputs(trips.head(2))
    cases = [
        ({**entities, "driver_id": [1]}, request, "entities.driver_id has 1 values, expected 2"),
        (
            {k: v for k, v in entities.items() if k != "pickup_zone_id"},
            request,
            "entities.pickup_zone_id is missing",
        ),
        ({**entities, "driver_id": ["a", "b"]}, request, "entities.driver_id must be int64"),
        (
            entities,
            {k: v for k, v in request.items() if k != "pickup_lat"},
            "request_data.pickup_lat is missing",
        ),
        (entities, {**request, "pickup_lat": [float("nan"), 1.0]}, "request_data.pickup_lat row 0"),
        ({k: [] for k in entities}, {k: [] for k in request}, "no rows"),
        (
            {k: v * SERVER_MAX_ROWS for k, v in entities.items()},  # 2 x the limit
            {k: v * SERVER_MAX_ROWS for k, v in request.items()},
            f"limit of {SERVER_MAX_ROWS}",
        ),
    ]
    for bad_entities, bad_request, needle in cases:
        error = rpc_error(lambda e=bad_entities, r=bad_request: client.predict("eta", e, r))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, needle
        assert needle in error.details()


def test_health_reflection_and_metrics_are_served(server: Server, client: PredictionClient) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="carrara.v1.PredictionService"),
        timeout=RPC_TIMEOUT_S,
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=RPC_TIMEOUT_S
    )
    services = {s.name for r in replies for s in r.list_services_response.service}
    assert "carrara.v1.PredictionService" in services
    channel.close()
    client.list_models()
    body = (
        urllib.request.urlopen(
            f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=RPC_TIMEOUT_S
        )
        .read()
        .decode()
    )
    assert 'carrara_requests_total{code="OK",method="ListModels",model=""}' in body
    assert "carrara_request_latency_seconds_bucket" in body


def test_promotion_is_picked_up_without_failing_requests(
    server: Server, client: PredictionClient, served_registry: Path
) -> None:
    registry = ModelRegistry(served_registry)
    card = registry.card("pricing:1")
    text = (served_registry / "pricing" / "1" / "model.txt").read_text()
    version = registry.register(text, card).version
    failures: list[Exception] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                client.predict("pricing", {"zone_id": [1]}, {"request_ts_s": [int(time.time())]})
            except grpc.RpcError as exc:
                failures.append(exc)

    def served() -> str:
        return client.predict("pricing", {"zone_id": [1]}, {"request_ts_s": [0]}).model_version

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        registry.promote("pricing", version, "production")
        wait_until(lambda: served() == str(version), timeout_s=10, what=f"pricing:{version} served")
    finally:
        stop.set()
        thread.join()
        registry.rollback("pricing", "production")
    assert failures == []


def test_broken_new_version_is_refused_and_the_old_one_keeps_serving(
    server: Server,
    client: PredictionClient,
    served_registry: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = ModelRegistry(served_registry)
    card = registry.card("eta:1")
    text = (served_registry / "eta" / "1" / "model.txt").read_text()
    version = registry.register(text, card).version
    (served_registry / "eta" / str(version) / "model.txt").write_text("tree\ngarbage\n")
    with pytest.raises(ModelError, match="checksum"):
        registry.promote("eta", version, "production")  # the registry refuses it...
    model_dir = served_registry / "eta"  # ...so move the alias by hand, as a careless script would
    write_aliases(model_dir, pushed(read_aliases(model_dir), "production", version, "promote"))
    try:
        refused = f"cannot serve eta:{version} as eta@production"
        # the watcher saw the move and refused the version
        wait_until(lambda: refused in caplog.text, timeout_s=10, what=f"log {refused!r}")
        assert "keeping version 1" in caplog.text
        reply = eta_request(client)
    finally:
        registry.rollback("eta", "production")
    assert reply.model_version == "1"


def eta_request(client: PredictionClient) -> pb.PredictResponse:
    return client.predict(
        "eta",
        {"driver_id": [1], "pickup_zone_id": [1], "dropoff_zone_id": [2]},
        {
            "pickup_lat": [44.0],
            "pickup_lon": [10.0],
            "dropoff_lat": [44.01],
            "dropoff_lon": [10.01],
            "request_ts_s": [int(time.time())],
        },
    )


def test_redis_outage_is_unavailable_then_recovers(
    server: Server, client: PredictionClient, redis_server: RedisProcess
) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    health = health_pb2_grpc.HealthStub(channel)

    def status() -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        return health.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S).status

    redis_server.stop()
    try:
        started = time.monotonic()
        error = rpc_error(
            lambda: client.predict("pricing", {"zone_id": [1]}, {"request_ts_s": [0]})
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 5
        assert error.details() == "the online store is unavailable"  # no URL to the client
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        wait_until(lambda: status() == not_serving, timeout_s=5, what="health NOT_SERVING")
    finally:
        redis_server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    wait_until(lambda: status() == serving, timeout_s=10, what="health SERVING again")
    reply = client.predict("pricing", {"zone_id": [1]}, {"request_ts_s": [0]})
    assert reply.missing_features[0] > 0  # the restarted Redis is empty, and that is data
    channel.close()


def test_values_helper_maps_python_types() -> None:
    assert to_values([1, 2]).WhichOneof("kind") == "int64_values"
    assert to_values([1.5]).WhichOneof("kind") == "double_values"
    assert to_values(["a"]).WhichOneof("kind") == "string_values"
    assert to_values([True]).WhichOneof("kind") == "bool_values"


def test_serve_on_a_taken_port_is_one_line(
    server: Server, applied_repo: Path, served_registry: Path, redis_server: RedisProcess
) -> None:
    result = run_python(
        [
            *("-m", "serving.cli", "serve", "--repo", str(applied_repo)),
            *("--registry", str(served_registry), "--port", str(server.port)),
            *("--redis-url", redis_server.url),
        ],
        timeout_s=60,
    )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{server.port}" in result.stderr
    assert "Traceback" not in result.stderr
