"""The demo's live part (serving/sample/live.py) on the test world: its last minutes of zone
events replayed through a stream and the ingester, then a burst pushed into one zone."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.client import PredictionClient, python_values
from serving.online.server import Server
from serving.sample import live
from serving.store.redis_process import RedisProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]
REF = "zone_activity:sum_trip_requested_60s"


def sums(client: PredictionClient, zones: list[int]) -> list[int | None]:
    reply = client.online_features({"zone_id": zones}, features=[REF])
    return [None if v is None else int(v) for v in python_values(reply.features[0])]


def test_the_replay_fills_the_windows_and_a_burst_moves_one_zone(
    server: Server, applied_repo: Path, redis_server: RedisProcess
) -> None:
    done = live.replay(applied_repo, redis_server.url)
    assert done.events > 0
    assert done.dead == 0
    quiet = 999  # no event of the world: its window holds the burst alone, tick or no tick
    with PredictionClient(f"127.0.0.1:{server.port}", timeout_s=10) as client:
        assert sum(v or 0 for v in sums(client, list(range(16)))) > 0  # the world, moved to now
        assert sums(client, [quiet]) == [None]
        live.burst(client, quiet, 40)
        assert sums(client, [quiet]) == [40]
