"""A malformed model text cannot take a process down: refused with a clear error everywhere.

LightGBM aborts the process on some malformed texts (`[Fatal] Model format error`); the
registry parses any text it has not checked itself in a child process first.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.client import PredictionClient
from serving.errors import ModelError
from serving.models.registry import ModelRegistry
from serving.online.server import Server, ServerSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def malformed(text: str) -> str:
    """A text LightGBM's parser aborts on (a tree with more thresholds than splits)."""
    return text.replace("threshold=", "threshold=1 2 3 4 5 6 7 8 9 10 11 12 ", 1)


@pytest.fixture
def registry_root(trained_registry: Path, tmp_path: Path) -> Path:
    """A copy holding eta:2, a malformed text whose card checksum matches it."""
    root = Path(shutil.copytree(trained_registry, tmp_path / "models"))
    good, bad = root / "eta" / "1", root / "eta" / "2"
    shutil.copytree(good, bad)
    text = malformed((good / "model.txt").read_text())
    (bad / "model.txt").write_text(text)
    card = json.loads((bad / "model.json").read_text())
    card["version"] = 2
    card["model_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    (bad / "model.json").write_text(json.dumps(card))
    return root


def test_loading_a_malformed_version_is_a_model_error(registry_root: Path) -> None:
    with pytest.raises(ModelError, match=r"eta:2: model.txt is malformed: .*Model format error"):
        ModelRegistry(registry_root).load("eta:2")


def test_a_malformed_version_is_listed_as_broken_and_cannot_be_promoted(
    registry_root: Path,
) -> None:
    registry = ModelRegistry(registry_root)
    eta = next(s for s in registry.list() if s.name == "eta")
    broken = {v.version: v.problem for v in eta.versions if v.problem}
    assert set(broken) == {2}
    assert "malformed" in broken[2]
    with pytest.raises(ModelError, match="malformed"):
        registry.promote("eta", 2, "staging")
    assert registry.aliases("eta") == {"production": 1}


def test_registering_a_malformed_text_leaves_nothing_on_disk(registry_root: Path) -> None:
    registry = ModelRegistry(registry_root)
    card = registry.card("eta:1")
    text = malformed((registry_root / "eta" / "1" / "model.txt").read_text())
    with pytest.raises(ModelError, match="malformed"):
        registry.register(text, card)
    assert registry.versions("eta") == [1, 2]
    assert not [p for p in (registry_root / "eta").iterdir() if p.name.startswith(".tmp")]


def test_server_with_an_alias_on_a_malformed_version_serves_the_others(
    applied_repo: Path, registry_root: Path, redis_url: str
) -> None:
    aliases = registry_root / "eta" / "aliases.json"
    state = json.loads(aliases.read_text())
    state["aliases"]["production"].append(2)  # as a hand edit would: promote refuses it
    aliases.write_text(json.dumps(state))
    settings = ServerSettings(
        repo=applied_repo, registry=registry_root, port=0, redis_url=redis_url
    )
    server = Server(settings)
    server.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        health = health_pb2_grpc.HealthStub(channel)
        status = {
            name: health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
            for name in ("eta", "pricing")
        }
        channel.close()
        assert status == {
            "eta": health_pb2.HealthCheckResponse.NOT_SERVING,
            "pricing": health_pb2.HealthCheckResponse.SERVING,
        }
        with PredictionClient(f"127.0.0.1:{server.port}", timeout_s=30) as client:
            reply = client.predict("pricing", {"zone_id": [1]}, {"request_ts_s": [0]})
            assert len(reply.predictions) == 1
            for ref in ("eta", "eta:2"):
                with pytest.raises(grpc.RpcError) as failed:
                    client.predict(ref, {"driver_id": [1]}, {})
                assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "eta:2" in failed.value.details()
    finally:
        server.stop()
