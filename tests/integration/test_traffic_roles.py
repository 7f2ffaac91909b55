"""Canary and shadow versions on a real server: a canary answers its share, sticky by an entity
key; a shadow is scored on the primary's vector after the reply and logged under its request
id; both set with `carrara models promote` and taken by hot reload."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

from serving.cli import main
from serving.models.registry import ModelRegistry
from serving.online.server import Server, ServerSettings
from serving.pb.carrara.v1 import prediction_pb2_grpc as pb_grpc
from serving.store.redis_process import RedisProcess
from tests.helpers import RPC_TIMEOUT_S, materialize_world, raw_redis
from tests.integration.test_prediction_log import eta_request

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def registry_root(trained_registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained registry, with eta:2 (eta:1's model again, so their scores agree)."""
    root = Path(shutil.copytree(trained_registry, tmp_path_factory.mktemp("roles") / "models"))
    registry = ModelRegistry(root)
    text = (root / "eta" / "1" / "model.txt").read_text()
    assert registry.register(text, registry.card("eta:1")).version == 2
    return root


@pytest.fixture(scope="module")
def server(
    applied_repo: Path,
    registry_root: Path,
    redis_server: RedisProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    if redis_server.process is None:
        redis_server.start()
    raw_redis(redis_server.url).flushall()  # whatever a module before left: written anew
    materialize_world(applied_repo, redis_server.url)
    settings = ServerSettings(
        repo=applied_repo,
        registry=registry_root,
        port=0,
        redis_url=redis_server.url,
        prediction_log=tmp_path_factory.mktemp("roles-log") / "predictions",
        watch_interval_s=3600,  # reloads are asked for explicitly below
    )
    served = Server(settings)
    served.start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def stub(server: Server) -> Iterator[pb_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def trips(applied_repo: Path) -> pd.DataFrame:
    return pd.read_parquet(applied_repo / "data" / "trips.parquet").tail(400)


def promote(root: Path, ref: str, alias: str, *extra: str) -> int:
    return main(["models", "promote", ref, "--alias", alias, "--registry", str(root), *extra])


def versions_by_driver(
    stub: pb_grpc.PredictionServiceStub, trips: pd.DataFrame
) -> dict[int, set[str]]:
    seen: dict[int, set[str]] = {}
    for i in range(len(trips)):
        row = trips.iloc[i : i + 1]
        reply = stub.Predict(eta_request(row), timeout=RPC_TIMEOUT_S)
        seen.setdefault(int(row.driver_id.iloc[0]), set()).add(reply.model_version)
    return seen


def test_a_canary_answers_its_share_and_one_driver_sees_one_version(
    server: Server, registry_root: Path, stub: pb_grpc.PredictionServiceStub, trips: pd.DataFrame
) -> None:
    assert (
        promote(registry_root, "eta:2", "canary", "--share", "0.5", "--sticky-key", "driver_id")
        == 0
    )
    assert server.predictor.reload()
    seen = versions_by_driver(stub, trips)
    assert all(len(v) == 1 for v in seen.values()), "a driver saw two versions"
    answered = [next(iter(v)) for v in seen.values()]
    canary_share = answered.count("2") / len(answered)
    assert 0.25 < canary_share < 0.75, canary_share
    request = eta_request(trips.head(1))
    request.model = "eta:1"
    assert stub.Predict(request, timeout=RPC_TIMEOUT_S).model_version == "1"  # never routed
    assert promote(registry_root, "eta:2", "canary", "--share", "0") == 0
    assert server.predictor.reload()
    assert set().union(*versions_by_driver(stub, trips.head(40)).values()) == {"1"}


def test_a_shadow_is_scored_on_the_primarys_vector_and_logged_under_its_request_id(
    server: Server, registry_root: Path, stub: pb_grpc.PredictionServiceStub, trips: pd.DataFrame
) -> None:
    assert promote(registry_root, "eta:2", "shadow") == 0
    assert server.predictor.reload()
    reply = stub.Predict(
        eta_request(trips.head(3)),
        metadata=[("x-request-id", "shadowed-1")],
        timeout=RPC_TIMEOUT_S,
    )
    assert reply.model_version == "1"  # the shadow never answers
    assert server.shadows is not None
    server.shadows.close()  # its queue scored (a test seam: the server's stop does this)
    assert server.tap is not None
    server.tap.flush()
    root = server.settings.prediction_log
    assert root is not None
    rows = pd.read_parquet(root)
    ours = rows[rows.request_id == "shadowed-1"].sort_values(["role", "row"])
    assert list(ours.role) == ["primary"] * 3 + ["shadow"] * 3
    assert list(ours.version) == ["1"] * 3 + ["2"] * 3
    primary, shadow = ours[ours.role == "primary"], ours[ours.role == "shadow"]
    features = [c for c in ours.columns if c.startswith("feature.")]
    np.testing.assert_array_equal(primary[features].to_numpy(), shadow[features].to_numpy())
    np.testing.assert_array_equal(primary.prediction.to_numpy(), shadow.prediction.to_numpy())
    assert list(reply.predictions) == list(primary.prediction)


def test_bad_traffic_settings_are_one_line(
    registry_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert promote(registry_root, "eta:2", "canary", "--share", "1.5") == 2
    assert "--share must be from 0 to 1, not 1.5" in capsys.readouterr().err
    assert promote(registry_root, "eta:2", "canary") == 2
    assert "a canary needs --share" in capsys.readouterr().err
    assert promote(registry_root, "eta:2", "canary", "--share", "0.1", "--sticky-key", "rider") == 2
    assert "--sticky-key 'rider' is no entity key of eta" in capsys.readouterr().err
    assert promote(registry_root, "eta:2", "staging", "--share", "0.1") == 2
    assert "--share and --sticky-key are for canary and shadow" in capsys.readouterr().err
