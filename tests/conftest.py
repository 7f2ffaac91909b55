"""Shared fixtures: a real redis-server on a free loopback port, an applied sample world, its
trained models, and a prediction server over them. Helpers live in tests/helpers.py.

The redis-server (serving.store.redis_process: `--save "" --appendonly no`, polled with PING,
stopped by its pid) is started once per session; every test using `redis_url` starts from an
empty server. A missing `redis-server` binary fails loudly: these tests are not optional.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from serving.store.redis_process import RedisProcess, private_redis
from tests.helpers import SERVER_MAX_ROWS, WORLD_END, materialize_world, write_repo

if TYPE_CHECKING:
    from serving.online.server import Server


@pytest.fixture(autouse=True)
def _no_redis_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's CARRARA_REDIS_URL must never point a test at their Redis."""
    monkeypatch.delenv("CARRARA_REDIS_URL", raising=False)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)")
    with private_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


def _running_and_empty(redis_server: RedisProcess) -> str:
    if redis_server.process is None:  # a test stopped it to simulate an outage
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    return _running_and_empty(redis_server)


@pytest.fixture(scope="session")
def world_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sample world (Parquet only), generated once per session, ending at WORLD_END."""
    from serving.sample.world import WorldSpec, generate

    out = tmp_path_factory.mktemp("world")
    spec = WorldSpec(
        out=out,
        drivers=300,
        zones=16,
        hours=30,
        end=WORLD_END,
        trips=4_000,
        surge_observations=3_000,
    )
    generate(spec)
    return out


@pytest.fixture(scope="session")
def applied_repo(
    tmp_path_factory: pytest.TempPathFactory, world_data: Path, redis_server: RedisProcess
) -> Path:
    """feature_repo/ with the sample world, `carrara apply`'d once (Feast apply is ~8 s)."""
    from serving.repo.compile import apply_repo

    repo = write_repo(
        tmp_path_factory.mktemp("repo") / "feature_repo", world_data, redis_server.port
    )
    apply_repo(repo)
    return repo


@pytest.fixture(scope="session")
def trained_registry(applied_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model registry holding eta:1 and pricing:1 (production), trained on the test world."""
    from serving.models.registry import ModelRegistry
    from serving.repo.model_kinds import model_kind
    from serving.training.train import train

    root = tmp_path_factory.mktemp("models")
    registry = ModelRegistry(root)
    for kind in ("eta", "pricing"):
        train(model_kind(applied_repo, kind), applied_repo, registry)
    return root


@pytest.fixture(scope="module")
def served_registry(trained_registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `server`'s registry: a private copy per module, as its tests promote, roll back
    and break versions."""
    root = tmp_path_factory.mktemp("served") / "models"
    shutil.copytree(trained_registry, root)
    return root


@pytest.fixture(scope="module")
def server(
    applied_repo: Path, served_registry: Path, redis_server: RedisProcess
) -> Iterator[Server]:
    """A prediction server on 127.0.0.1:0 (the port it bound is `server.port`) over the whole
    test world, materialized into the session's redis-server, and `served_registry`.

    One per module, because modules change its world: they stop and restart the redis-server
    (which comes back empty) and move aliases. A test in the same module that takes
    `redis_url` empties the Redis under it: such tests belong elsewhere.
    """
    from serving.online.server import Server, ServerSettings

    url = _running_and_empty(redis_server)
    materialize_world(applied_repo, url)
    settings = ServerSettings(
        repo=applied_repo,
        registry=served_registry,
        port=0,
        redis_url=url,
        metrics_port=0,
        max_rows=SERVER_MAX_ROWS,
        watch_interval_s=0.2,
    )
    served = Server(settings)
    served.start()
    yield served
    served.stop()
