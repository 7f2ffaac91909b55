"""The ML engineer's path from the README: add a feature, apply, retrain, promote, served live.

A running server notices the rewritten serving plan and the alias move, and serves the new
model version (with its new on-demand feature) without a restart.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from serving.client import PredictionClient
from serving.models.registry import ModelRegistry
from serving.online.server import Server, ServerSettings
from serving.pb.carrara.v1 import prediction_pb2 as pb
from serving.repo.compile import apply_repo
from serving.repo.model_kinds import model_kind
from serving.store.redis_process import RedisProcess
from serving.training.train import train
from tests.helpers import RPC_TIMEOUT_S, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

BEARING = '''

def trip_bearing(inputs: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
    """Initial compass bearing from pickup to dropoff, in degrees."""
    lat1 = np.radians(np.asarray(inputs["pickup_lat"], dtype=np.float64))
    lat2 = np.radians(np.asarray(inputs["dropoff_lat"], dtype=np.float64))
    dlon = np.radians(np.asarray(inputs["dropoff_lon"], dtype=np.float64)) - np.radians(
        np.asarray(inputs["pickup_lon"], dtype=np.float64)
    )
    y = np.sin(dlon) * np.cos(lat2)
    x = np.cos(lat1) * np.sin(lat2) - np.sin(lat1) * np.cos(lat2) * np.cos(dlon)
    return {"bearing_deg": np.degrees(np.arctan2(y, x)) % 360.0}
'''

VIEW = """

@on_demand_feature_view(
    sources=[trip_request],
    schema=[Field(name="bearing_deg", dtype=Float64)],
    mode="python",
)
def trip_bearing(inputs: dict[str, Any]) -> dict[str, Any]:
    import transforms

    return {k: v.tolist() for k, v in transforms.trip_bearing(inputs).items()}
"""


def add_bearing_feature(repo: Path) -> None:
    (repo / "transforms.py").write_text((repo / "transforms.py").read_text() + BEARING)
    definitions = (repo / "definitions.py").read_text()
    definitions = definitions.replace(
        "\n\npricing_v1 = FeatureService(", VIEW + "\n\npricing_v1 = FeatureService("
    )
    definitions = definitions.replace(
        "        trip_geometry,\n", "        trip_geometry,\n        trip_bearing,\n"
    )
    (repo / "definitions.py").write_text(definitions)


def test_new_feature_is_served_after_apply_train_promote(
    applied_repo: Path, trained_registry: Path, redis_server: RedisProcess, tmp_path: Path
) -> None:
    repo = tmp_path / "feature_repo"
    shutil.copytree(applied_repo, repo)
    models = tmp_path / "models"
    shutil.copytree(trained_registry, models)
    if redis_server.process is None:
        redis_server.start()
    settings = ServerSettings(
        repo=repo, registry=models, port=0, redis_url=redis_server.url, watch_interval_s=0.2
    )
    server = Server(settings)
    port = server.start()
    try:
        add_bearing_feature(repo)
        apply_repo(repo)
        registration = train(model_kind(repo, "eta"), repo, ModelRegistry(models)).registration
        assert registration.alias == "staging"
        ModelRegistry(models).promote("eta", registration.version, "production")
        request: dict[str, list[float] | list[int]] = {
            "pickup_lat": [44.07],
            "pickup_lon": [10.09],
            "dropoff_lat": [44.09],
            "dropoff_lon": [10.09],
            "request_ts_s": [int(time.time())],
        }
        entities = {"driver_id": [1], "pickup_zone_id": [1], "dropoff_zone_id": [2]}
        new = str(registration.version)
        with PredictionClient(f"127.0.0.1:{port}", timeout_s=RPC_TIMEOUT_S) as client:

            def new_version_served() -> pb.PredictResponse | None:
                reply = client.predict("eta", entities, request, return_features=True)
                return reply if reply.model_version == new else None

            reply = wait_until(new_version_served, timeout_s=10, what=f"eta:{new} served")
        names = list(reply.feature_names)
        bearing = reply.features[0].values[names.index("trip_bearing__bearing_deg")]
        assert bearing == pytest.approx(0.0, abs=0.5)  # due north
    finally:
        server.stop()
