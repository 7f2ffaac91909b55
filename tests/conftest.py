"""Shared fixtures: a real redis-server on a free loopback port, and an applied sample world.

The server (serving.store.redis_process: `--save "" --appendonly no`, polled with PING, stopped by
its pid) is started once per session; every test using `redis_url` starts from an empty
server. A missing `redis-server` binary fails loudly: these tests are not optional.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from serving.store.redis_process import RedisProcess, free_port, private_redis

RedisServer = RedisProcess  # older name, still used by some test modules
__all__ = ["RedisServer", "free_port"]

ROOT = Path(__file__).resolve().parents[1]
_NOW = datetime.now(UTC).replace(second=0, microsecond=0)
# The test world ends now (to 5 minutes) so that served features are fresh, not stale.
WORLD_END = _NOW.replace(minute=_NOW.minute - _NOW.minute % 5)


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


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    if redis_server.process is None:  # a test stopped it to simulate an outage
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


def write_repo(target: Path, data_dir: Path, redis_port: int) -> Path:
    """A copy of feature_repo/ whose online store is the test's redis-server."""
    shutil.copytree(
        ROOT / "feature_repo", target, ignore=shutil.ignore_patterns("data", "__pycache__")
    )
    config = (target / "feature_store.yaml").read_text()
    assert '"127.0.0.1:6379"' in config, "feature_store.yaml changed: update write_repo"
    config = config.replace('"127.0.0.1:6379"', f'"127.0.0.1:{redis_port}"')
    (target / "feature_store.yaml").write_text(config)
    (target / "data").mkdir()
    for parquet in data_dir.glob("*.parquet"):
        shutil.copy(parquet, target / "data" / parquet.name)
    return target


@pytest.fixture(scope="session")
def world_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sample world (Parquet only), generated once per session."""
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


def materialize_world(repo: Path, redis_url: str) -> None:
    """`carrara materialize` of the whole test world into `redis_url`."""
    import subprocess
    import sys
    from datetime import timedelta

    start = (WORLD_END - timedelta(days=3)).isoformat()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.cli",
            "materialize",
            "--repo",
            str(repo),
            "--start",
            start,
            "--end",
            WORLD_END.isoformat(),
            "--redis-url",
            redis_url,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
