"""Degraded mode, chosen per model: with the online store down, a model configured to score
without it answers from request data (stored features missing, `degraded` set, counted);
every other model fails UNAVAILABLE, as by default."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from serving.client import PredictionClient
from serving.online.server import Server, ServerSettings
from serving.store.redis_process import RedisProcess
from tests.helpers import materialize_world

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_model_scores_without_the_store_only_when_configured_to(
    applied_repo: Path, trained_registry: Path, redis_server: RedisProcess, redis_url: str
) -> None:
    materialize_world(applied_repo, redis_url)
    settings = ServerSettings(
        repo=applied_repo,
        registry=trained_registry,
        port=0,
        redis_url=redis_url,
        score_without_store=frozenset({"pricing"}),
        store_budget_ms=200,
    )
    server = Server(settings)
    server.start()
    request = ("pricing", {"zone_id": [1, 2]}, {"request_ts_s": [0, 0]})
    try:
        with PredictionClient(f"127.0.0.1:{server.port}", timeout_s=5) as client:
            healthy = client.predict(*request, return_features=True)
            assert not healthy.degraded
            stored = sum(  # the features read from Redis: the batch view's and the windows'
                1
                for n in healthy.feature_names
                if n.startswith(("zone_stats__", "zone_activity__"))
            )
            redis_server.stop()
            degraded = client.predict(*request, return_features=True)
            assert degraded.degraded
            assert list(degraded.missing_features) == [stored, stored]
            assert len(degraded.predictions) == 2
            with pytest.raises(grpc.RpcError) as failed:
                client.predict(
                    "eta",
                    {"driver_id": [1], "pickup_zone_id": [1], "dropoff_zone_id": [2]},
                    {
                        **{k: [44.0] for k in ("pickup_lat", "dropoff_lat")},
                        **{k: [11.0] for k in ("pickup_lon", "dropoff_lon")},
                        "request_ts_s": [0],
                    },
                )
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            metrics = server.metrics.registry.get_sample_value(
                "carrara_degraded_predictions_total", {"model": "pricing"}
            )
            assert metrics == 1.0
            redis_server.start()
            assert not client.predict(*request).degraded
    finally:
        server.stop()
        if redis_server.process is None:
            redis_server.start()
