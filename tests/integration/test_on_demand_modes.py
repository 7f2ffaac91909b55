"""On-demand views in every mode Feast runs online, served as Feast computes them.

A small repo of our own making, in the shapes Feast's docs show: a python-mode view rebuilt
from its source (it delegates to no module), a python singleton view called row by row, and a
pandas-mode view reading features by their full names; each reads a feature view and request
data. Carrara's GetOnlineFeatures must equal Feast's `get_online_features`, value for value.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from serving.batch.materialize import materialize
from serving.repo.compile import apply_repo, feast_context
from serving.repo.plan import RepoFiles, load_plan
from serving.store.redis_process import RedisProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOW = datetime.now(UTC).replace(microsecond=0)
DEFINITIONS = """
from datetime import timedelta

import numpy as np
import pandas as pd
from feast import Entity, FeatureView, Field, FileSource, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float32, Float64, Int64, String
from feast.value_type import ValueType

e = Entity(name="e", join_keys=["eid"], value_type=ValueType.INT64)
stats = FeatureView(
    name="stats",
    entities=[e],
    ttl=timedelta(days=2),
    schema=[
        Field(name="rate", dtype=Float32),
        Field(name="trips", dtype=Int64),
        Field(name="tag", dtype=String),
    ],
    source=FileSource(path="data/stats.parquet", timestamp_field="event_timestamp"),
)
req = RequestSource(name="req", schema=[Field(name="bonus", dtype=Int64)])


@on_demand_feature_view(
    sources=[stats, req],
    schema=[Field(name="score", dtype=Float64)],
    mode="python",
    singleton=True,
)
def one_row(inputs):
    return {"score": (inputs["rate"] or 0.0) * inputs["bonus"] + (inputs["trips"] or 0)}


@on_demand_feature_view(
    sources=[stats, req],
    schema=[Field(name="label", dtype=String), Field(name="more_trips", dtype=Int64)],
    mode="python",
)
def columns(inputs):
    return {
        "label": [f"{t}-{b}" for t, b in zip(inputs["tag"], inputs["bonus"])],
        "more_trips": [(t or 0) + b for t, b in zip(inputs["trips"], inputs["bonus"])],
    }


@on_demand_feature_view(
    sources=[stats, req],
    schema=[Field(name="log_rate", dtype=Float64), Field(name="ratio", dtype=Float64)],
    mode="pandas",
)
def frame(inputs: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame()
    out["log_rate"] = np.log1p(inputs["stats__rate"])
    out["ratio"] = inputs["trips"] / inputs["bonus"]
    return out
"""
REFS = ["one_row:score", "columns:label", "columns:more_trips", "frame:log_rate", "frame:ratio"]
REFS += ["stats:rate"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisProcess) -> Path:
    root = tmp_path_factory.mktemp("odfv_modes") / "repo"
    (root / "data").mkdir(parents=True)
    (root / "odfv_modes_definitions.py").write_text(DEFINITIONS)
    (root / "feature_store.yaml").write_text(
        "project: odfv_modes\nregistry: data/registry.db\nprovider: local\n"
        f'online_store:\n    type: redis\n    connection_string: "127.0.0.1:{redis_server.port}"\n'
        "entity_key_serialization_version: 3\n"
    )
    table = pa.table(
        {
            "eid": pa.array([1, 2, 3], pa.int64()),
            "event_timestamp": pa.array([NOW - timedelta(hours=1)] * 3, pa.timestamp("us", "UTC")),
            "rate": pa.array([0.5, 1.25, None], pa.float32()),
            "trips": pa.array([10, None, 7], pa.int64()),
            "tag": pa.array(["a", "b", None]),
        }
    )
    pq.write_table(table, root / "data" / "stats.parquet")
    apply_repo(root)
    redis.Redis.from_url(redis_server.url).flushall()
    materialize(root, NOW - timedelta(days=1), NOW)
    return root


def _feast(repo: Path, ids: list[int], bonus: list[int]) -> dict[str, list[Any]]:
    with feast_context(repo):
        from feast import FeatureStore

        store = FeatureStore(repo_path=str(repo))
        rows = [{"eid": i, "bonus": b} for i, b in zip(ids, bonus, strict=True)]
        # short names: Feast drops python-mode outputs under full_feature_names=True
        found = store.get_online_features(features=REFS[1:], entity_rows=rows).to_dict()
        # Feast's singleton mode fails on several rows (arrow columns of one value): by row
        singles = [
            store.get_online_features(features=REFS[:1], entity_rows=[row]).to_dict()["score"]
            for row in rows
        ]
    expected = {r.replace(":", "__"): found[r.partition(":")[2]] for r in REFS[1:]}
    return {"one_row__score": [v for (v,) in singles], **expected}


def test_every_on_demand_mode_is_served_as_feast_computes_it(
    repo: Path, redis_server: RedisProcess, tmp_path: Path
) -> None:
    from serving.client import PredictionClient, python_values
    from serving.online.server import Server, ServerSettings

    plan = load_plan(RepoFiles.locate(repo))
    assert (plan.on_demand_views["one_row"].mode, plan.on_demand_views["one_row"].singleton) == (
        "python",
        True,
    )
    assert plan.on_demand_views["frame"].mode == "pandas"
    assert plan.on_demand_views["columns"].module is None  # rebuilt from its source
    ids, bonus = [1, 2, 3, 4], [3, 4, 5, 6]  # 2 and 3 hold nulls; 4 is no entity
    expected = _feast(repo, ids, bonus)
    server = Server(
        ServerSettings(repo=repo, registry=tmp_path / "models", port=0, redis_url=redis_server.url)
    )
    server.start()
    try:
        with PredictionClient(f"127.0.0.1:{server.port}", timeout_s=30) as client:
            response = client.online_features(
                {"eid": ids}, features=REFS, request_data={"bonus": bonus}
            )
    finally:
        server.stop()
    ours = {c.name: python_values(c) for c in response.features}
    assert ours.keys() == expected.keys()
    for name, values in expected.items():
        assert _same(ours[name], values), (name, ours[name], values)
    assert ours["one_row__score"][0] == 0.5 * 3 + 10
    assert ours["columns__label"][:3] == ["a-3", "b-4", "None-5"]


def _same(ours: list[Any], feast: list[Any]) -> bool:
    """Equal, NaN equal to NaN and to a null (the wire has no null for a computed NaN)."""
    if len(ours) != len(feast):
        return False
    pairs = zip(ours, feast, strict=True)
    return all(a == b or (_nan_or_none(a) and _nan_or_none(b)) for a, b in pairs)


def _nan_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)
