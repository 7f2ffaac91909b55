"""What `carrara materialize` refuses, and that a refusal comes before any write: a hand-made
repo (plan and registry as `carrara apply` leaves them; no Feast import) holding a view that
is fine and views that are not.

Each refusal is one line on stderr naming the view, the feature or setting, and the Feast term
for the construct; the exit status is 1; Redis stays empty and the registry unchanged. A
construct the run does not need is a warning, not a refusal.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.batch.materialize import materialize
from serving.cli import main
from serving.repo.feast_registry import _len_record, materialized_until, read_registry
from serving.repo.plan import (
    MATERIALIZE,
    PLAN_FILE,
    SERVE,
    BatchSource,
    Column,
    FeatureViewPlan,
    RepoFiles,
    ServingPlan,
    Unsupported,
    save_plan,
)
from serving.store import codec, encoding
from serving.store.redis_process import RedisProcess
from tests.helpers import hash_of, snapshot

pytestmark = pytest.mark.integration

PROJECT = "refusals"
T0 = datetime(2026, 10, 1, tzinfo=UTC)
START, END = T0, T0 + timedelta(days=1)
TS = pa.timestamp("us", tz="UTC")


def _view(name: str, *features: Column, keys: tuple[Column, ...] | None = None) -> FeatureViewPlan:
    return FeatureViewPlan(
        name=name,
        join_keys=keys if keys is not None else (Column("driver_id", "Int64"),),
        features=features,
        ttl_s=None,
        source=BatchSource(f"data/{name}.parquet", "ts"),
    )


GOOD = _view("good", Column("rate", "Float64"))
CONFIGS = _view("configs", Column("config", "Json"), Column("meta", "Map"))
VECTORS = _view("vectors", Column("emb", "Array(Float32)", vector_index=True, vector_length=3))
ZONED = _view("zoned", Column("when", "ZonedTimestamp"))
SMALL = _view("small", Column("n", "Int32"), keys=(Column("zone", "Int32"),))
GLOBAL = _view("global", Column("total", "Int64"), keys=(Column("__dummy_id", "String"),))


def _tables(bad: str | None = None) -> dict[str, pa.Table]:
    def rows(**columns: Any) -> pa.Table:
        n = len(next(iter(columns.values())))
        base = {"driver_id": pa.array(range(1, n + 1), pa.int64())}
        return pa.table({**base, "ts": pa.array([T0 + timedelta(hours=1)] * n, TS), **columns})

    configs = ['{"a": 1}', '{"b": [2]}', "{oops" if bad == "json" else "null"]
    vectors = [[1, 2, 3], [1, 2] if bad == "vector" else [4, 5, 6], None]
    return {
        "good": rows(rate=[0.5, 1.5, None]),
        "configs": rows(
            config=configs,
            meta=pa.array([{"k": "v"}, None, {"k": ""}], pa.struct([("k", pa.string())])),
        ),
        "vectors": rows(emb=pa.array(vectors, pa.list_(pa.float32()))),
        "zoned": rows(when=pa.array([T0] * 3, TS)),
        "small": pa.table(
            {
                "zone": pa.array([1, 2**31 if bad == "int32" else 2, 3], pa.int64()),
                "ts": pa.array([T0 + timedelta(hours=1)] * 3, TS),
                "n": pa.array([1, 2, 3], pa.int64()),
            }
        ),
        "global": pa.table(
            {"ts": pa.array([T0, T0 + timedelta(hours=2)], TS), "total": pa.array([7, 9])}
        ),
    }


def make_repo(
    root: Path,
    port: int,
    views: list[FeatureViewPlan],
    unsupported: tuple[Unsupported, ...] = (),
    bad: str | None = None,
    key_version: int = 3,
) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "feature_store.yaml").write_text(
        f"project: {PROJECT}\nregistry: data/registry.db\nprovider: local\n"
        f'online_store:\n    type: redis\n    connection_string: "127.0.0.1:{port}"\n'
        f"entity_key_serialization_version: {key_version}\n"
    )
    for name, table in _tables(bad).items():
        pq.write_table(table, root / "data" / f"{name}.parquet")
    registry = b"".join(
        _len_record(
            6, _len_record(1, _len_record(1, v.name.encode()) + _len_record(2, PROJECT.encode()))
        )
        for v in views
    )
    (root / "data" / "registry.db").write_bytes(registry)
    plan = ServingPlan(
        PROJECT,
        hashlib.sha256(registry).hexdigest(),
        {v.name: v for v in views},
        {},
        {},
        unsupported=unsupported,
        entity_key_serialization_version=key_version,
    )
    save_plan(plan, root / "data" / PLAN_FILE)
    return root


def run_cli(capsys: pytest.CaptureFixture[str], repo: Path, *args: str) -> tuple[int, str, str]:
    window = ["--start", START.isoformat(), "--end", END.isoformat()]
    code = main(["materialize", "--repo", str(repo), *window, *args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused_before_writing(
    capsys: pytest.CaptureFixture[str], repo: Path, url: str, *args: str
) -> str:
    registry = read_registry(RepoFiles.locate(repo).registry)
    code, _, err = run_cli(capsys, repo, *args)
    assert code == 1, err
    lines = [line for line in err.strip().splitlines() if " WARNING " not in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert snapshot(url) == {}
    assert read_registry(RepoFiles.locate(repo).registry) == registry
    return lines[0]


def test_a_run_writes_and_records_every_view_or_nothing(
    tmp_path: Path, redis_server: RedisProcess, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_repo(tmp_path / "r", redis_server.port, [GOOD, CONFIGS], bad="json")
    line = assert_refused_before_writing(capsys, repo, redis_url)
    assert "feature view 'configs', feature 'config' (entity driver_id=3)" in line
    assert "invalid JSON" in line


def test_a_short_vector_is_refused_naming_the_view_feature_and_entity(
    tmp_path: Path, redis_server: RedisProcess, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_repo(tmp_path / "r", redis_server.port, [GOOD, VECTORS], bad="vector")
    line = assert_refused_before_writing(capsys, repo, redis_url)
    assert "feature view 'vectors', feature 'emb'" in line
    assert "length 2 (entity driver_id=2) does not match its vector_length 3" in line


def test_an_int32_key_out_of_range_is_refused(
    tmp_path: Path, redis_server: RedisProcess, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_repo(tmp_path / "r", redis_server.port, [GOOD, SMALL], bad="int32")
    line = assert_refused_before_writing(capsys, repo, redis_url)
    assert "feature view 'small', join keys" in line
    assert "2147483648" in line


def test_a_type_feast_cannot_materialize_is_refused_by_its_name(
    tmp_path: Path, redis_server: RedisProcess, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_repo(tmp_path / "r", redis_server.port, [GOOD, ZONED])
    line = assert_refused_before_writing(capsys, repo, redis_url, "--views", "good,zoned")
    assert "feature view 'zoned', feature 'when': ZonedTimestamp is not supported" in line


def test_an_unsupported_construct_refuses_only_the_run_that_needs_it(
    tmp_path: Path,
    redis_server: RedisProcess,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    no_source = FeatureViewPlan("pushed", GOOD.join_keys, GOOD.features, 3600, None)
    reason = "Carrara materializes FileSource batch sources of Parquet files only"
    records = (
        Unsupported("pushed", "BigQuerySource", reason, needed_by=(MATERIALIZE,)),
        Unsupported(
            "fares", 'mode="pandas"', "python mode", None, "on-demand feature view", (SERVE,)
        ),
    )
    repo = make_repo(tmp_path / "r", redis_server.port, [GOOD, no_source], records)
    line = assert_refused_before_writing(capsys, repo, redis_url)
    assert "feature view 'pushed': BigQuerySource is not supported by Carrara" in line
    assert "--views" in line
    with caplog.at_level(logging.WARNING):
        code, out, err = run_cli(capsys, repo, "--views", "good")
    assert code == 0, err
    assert "good" in out
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "'pushed'" in warned
    assert "on-demand feature view 'fares'" in warned
    assert materialized_until(read_registry(RepoFiles.locate(repo).registry), PROJECT).keys() == {
        "good"
    }


def test_an_unknown_key_version_is_refused(
    tmp_path: Path, redis_server: RedisProcess, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_repo(tmp_path / "r", redis_server.port, [GOOD], key_version=4)
    line = assert_refused_before_writing(capsys, repo, redis_url)
    assert "entity_key_serialization_version 4" in line


def test_an_entityless_view_is_written_under_feast_s_dummy_key(
    tmp_path: Path, redis_server: RedisProcess, redis_url: str
) -> None:
    repo = make_repo(tmp_path / "r", redis_server.port, [GLOBAL])
    report = materialize(repo, START, END)
    assert (report.views[0].entity_rows, report.views[0].written) == (1, 1)
    key = encoding.encode_entity_keys(["__dummy_id"], ["String"], [[""]], PROJECT)[0]
    fields = hash_of(redis_url, key)
    assert codec.decode_value(fields[codec.field_name("global", "total")]) == 9
    assert list(snapshot(redis_url)) == [key]
