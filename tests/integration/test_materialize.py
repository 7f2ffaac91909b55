"""`carrara materialize` end to end on a hand-made repo (no Feast import): window, latest row,
the write guard, Feast's registry, incremental runs, bad input and interrupted runs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

import serving.batch.materialize as materialize_module
from serving.batch.materialize import materialize
from serving.cli import main
from serving.ports import free_port
from serving.repo.feast_registry import _len_record, materialized_until, read_registry
from serving.repo.plan import (
    PLAN_FILE,
    BatchSource,
    Column,
    FeatureViewPlan,
    RepoFiles,
    ServingPlan,
    load_plan,
    save_plan,
)
from serving.store import codec, encoding
from serving.store.online_store import OnlineStore
from serving.store.redis_process import RedisProcess
from serving.store.settings import RedisSettings
from serving.store.write_guard import FramedRows, RowBatch
from tests.helpers import Snapshot, hash_of, snapshot

pytestmark = pytest.mark.integration

PROJECT = "handmade"
T0 = datetime(2026, 10, 1, tzinfo=UTC)
START, END = T0, T0 + timedelta(days=1)
HOUR = timedelta(hours=1)
TS = pa.timestamp("us", tz="UTC")

RIDES = FeatureViewPlan(
    name="rides",
    join_keys=(Column("driver_id", "Int64"),),
    features=(Column("rate", "Float32"), Column("trips", "Int64"), Column("kind", "String")),
    ttl_s=3600,
    source=BatchSource("data/rides.parquet", "event_timestamp", "created"),
)
ROUTES = FeatureViewPlan(
    name="routes",
    join_keys=(Column("city", "String"), Column("zone", "Int32")),
    features=(Column("eta_s", "Float64"),),
    ttl_s=0,
    source=BatchSource("data/routes.parquet", "ts", None, {"eta_raw": "eta_s"}),
)


def _rides() -> pa.Table:
    rows = [  # driver, event, created, rate, trips, kind
        (1, START - HOUR, START, 0.1, 1, "before the window"),
        (1, START, START, 0.2, 2, "at the start: in"),
        (2, START + HOUR, START, 0.3, 3, "older"),
        (2, START + 2 * HOUR, START, None, 4, None),  # latest: nulls are written as nulls
        (3, START + HOUR, START + HOUR, 0.5, 5, "created earlier"),
        (3, START + HOUR, START + 2 * HOUR, 0.6, 6, "created later: wins the tie"),
        (4, END, END, 0.7, 7, ""),  # at the end: in
        (5, END + HOUR, END, 0.8, 8, "after the window"),
    ]
    columns = list(zip(*rows, strict=True))
    return pa.table(
        {
            "driver_id": pa.array(columns[0], pa.int64()),
            "event_timestamp": pa.array(columns[1], TS),
            "created": pa.array(columns[2], TS),
            "rate": pa.array(columns[3], pa.float32()),
            "trips": pa.array(columns[4], pa.int64()),
            "kind": pa.array(columns[5], pa.string()),
        }
    )


def _routes() -> pa.Table:
    return pa.table(
        {
            "city": ["north", "north", "", "ü"],
            "zone": pa.array([1, -7, 1, 2**31 - 1], pa.int32()),
            "ts": pa.array([START + HOUR] * 4, pa.timestamp("ns")),  # naive ns: UTC
            "eta_raw": [60.0, 70.0, 80.0, None],
        }
    )


def _registry(views: list[FeatureViewPlan]) -> bytes:
    """A Feast registry holding just each view's name and project (all this code reads)."""
    return b"".join(
        _len_record(
            6, _len_record(1, _len_record(1, v.name.encode()) + _len_record(2, PROJECT.encode()))
        )
        for v in views
    )


def make_repo(
    root: Path, port: int, tables: dict[str, pa.Table], key_ttl_s: int | None = None
) -> Path:
    """A repo with a current serving plan and a registry, as `carrara apply` leaves it."""
    (root / "data").mkdir(parents=True)
    ttl = f"    key_ttl_seconds: {key_ttl_s}\n" if key_ttl_s else ""
    (root / "feature_store.yaml").write_text(
        f"project: {PROJECT}\nregistry: data/registry.db\nprovider: local\n"
        f'online_store:\n    type: redis\n    connection_string: "127.0.0.1:{port}"\n{ttl}'
    )
    for name, table in tables.items():
        pq.write_table(table, root / "data" / f"{name}.parquet", row_group_size=3)
    registry = _registry([RIDES, ROUTES])
    (root / "data" / "registry.db").write_bytes(registry)
    plan = ServingPlan(
        PROJECT, hashlib.sha256(registry).hexdigest(), {"rides": RIDES, "routes": ROUTES}, {}, {}
    )
    save_plan(plan, root / "data" / PLAN_FILE)
    return root


@pytest.fixture
def repo(tmp_path: Path, redis_server: RedisProcess, redis_url: str) -> Path:
    return make_repo(tmp_path / "repo", redis_server.port, {"rides": _rides(), "routes": _routes()})


def _raw(
    repo: Path, url: str, view: FeatureViewPlan, keys: list[list[Any]]
) -> list[dict[str, Any]]:
    names, dtypes = [k.name for k in view.join_keys], [k.dtype for k in view.join_keys]
    rows = []
    for key in encoding.encode_entity_keys(names, dtypes, keys, PROJECT):
        fields = hash_of(url, key)
        row = {
            f.name: codec.decode_value(fields.get(codec.field_name(view.name, f.name)))
            for f in view.features
        }
        row["_ts"] = codec.decode_timestamp_micros(fields.get(codec.ts_field(view.name)))
        rows.append(row if fields else {})
    return rows


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * 10**6


# --- what gets written --------------------------------------------------------------------


def test_latest_row_per_entity_in_the_inclusive_window(repo: Path, redis_url: str) -> None:
    report = materialize(repo, START, END)
    rides = next(v for v in report.views if v.view == "rides")
    assert (rides.rows_scanned, rides.entity_rows, rides.written, rides.skipped) == (8, 4, 4, 0)
    assert rides.values == 12
    got = _raw(repo, redis_url, RIDES, [[1, 2, 3, 4, 5]])
    assert [r.get("kind") for r in got] == [
        "at the start: in",
        None,
        "created later: wins the tie",
        "",
        None,
    ]
    assert got[1] == {"rate": None, "trips": 4, "kind": None, "_ts": _us(START + 2 * HOUR)}
    assert got[0]["rate"] == pytest.approx(0.2)
    assert got[4] == {}
    routes = _raw(repo, redis_url, ROUTES, [["north", "north", "", "ü"], [1, -7, 1, 2**31 - 1]])
    assert [r["eta_s"] for r in routes] == [60.0, 70.0, 80.0, None]  # field_mapping applied


def test_a_rerun_skips_every_row_and_changes_nothing(repo: Path, redis_url: str) -> None:
    materialize(repo, START, END)
    before = snapshot(redis_url)
    report = materialize(repo, START, END)
    assert (report.written, report.skipped) == (0, report.entity_rows)
    assert snapshot(redis_url) == before


def test_an_older_row_never_overwrites_a_newer_one(repo: Path, redis_url: str) -> None:
    store = OnlineStore(RedisSettings(redis_url), PROJECT)
    key = encoding.encode_entity_keys(["driver_id"], ["Int64"], [[3]], PROJECT)
    newer = encoding.encode_timestamps(np.array([_us(END + 10 * HOUR)]))
    values = [
        encoding.encode_values("Float32", [9.5]),
        encoding.encode_values("Int64", [99]),
        [b""],
    ]
    store.write_view("rides", ["rate", "trips", "kind"], [RowBatch(key, newer, values)])
    store.close()
    report = materialize(repo, START, END, views=["rides"])
    assert (report.written, report.skipped) == (3, 1)
    assert _raw(repo, redis_url, RIDES, [[3]])[0]["trips"] == 99


def test_key_ttl_seconds_expires_written_keys(
    tmp_path: Path, redis_server: RedisProcess, redis_url: str
) -> None:
    repo = make_repo(
        tmp_path / "ttl", redis_server.port, {"rides": _rides(), "routes": _routes()}, 600
    )
    materialize(repo, START, END, views=["rides"])
    ttls = [ttl for _, ttl in snapshot(redis_url).values()]
    assert len(ttls) == 4
    assert all(595 <= t <= 600 for t in ttls)


def test_memory_stays_bounded_by_compacting_to_one_row_per_entity(
    repo: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    materialize(repo, START, END)
    expected = snapshot(redis_url)
    redis.Redis.from_url(redis_url).flushall()
    import serving.batch.parquet_source as source

    monkeypatch.setattr(source, "COMPACT_FLOOR_ROWS", 1)
    monkeypatch.setattr(source, "BATCH_ROWS", 1)
    monkeypatch.setattr(materialize_module, "WRITE_ROWS", 1)
    materialize(repo, START, END)
    assert snapshot(redis_url) == expected


# --- Feast's registry and incremental runs ------------------------------------------------


def test_the_interval_is_recorded_and_the_plan_stays_current(repo: Path) -> None:
    materialize(repo, START, END, views=["rides"])
    files = RepoFiles.locate(repo)
    assert materialized_until(read_registry(files.registry), PROJECT) == {"rides": END}
    load_plan(files)  # raises if the registry write made the plan stale


def test_incremental_resumes_where_the_last_run_ended(repo: Path, redis_url: str) -> None:
    materialize(repo, START, START + 90 * timedelta(minutes=1))
    first = _raw(repo, redis_url, RIDES, [[2]])[0]
    assert first["trips"] == 3
    report = materialize(repo, end=END, incremental=True)
    rides = next(v for v in report.views if v.view == "rides")
    assert (rides.start, rides.end) == (START + 90 * timedelta(minutes=1), END)
    assert (rides.entity_rows, rides.written) == (2, 2)  # drivers 2 (newer row) and 4
    assert _raw(repo, redis_url, RIDES, [[2]])[0]["trips"] == 4


def test_incremental_without_history_starts_at_now_minus_ttl(repo: Path) -> None:
    now = datetime.now(UTC)
    report = materialize(repo, end=now, incremental=True)
    rides = next(v for v in report.views if v.view == "rides")
    assert timedelta(0) <= rides.start - (now - timedelta(hours=1)) < timedelta(minutes=1)
    routes = next(v for v in report.views if v.view == "routes")
    assert abs(routes.start - (now - timedelta(weeks=52))) < timedelta(minutes=1)


# --- the command line and bad input -------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["materialize", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_command_prints_views_counts_values_and_time(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        capsys, "--repo", str(repo), "--start", START.isoformat(), "--end", END.isoformat()
    )
    assert code == 0, err
    assert "rides" in out
    assert "4 entity rows: 4 written, 0 skipped" in out
    assert "12 values" in out
    assert (
        out.strip()
        .splitlines()[-1]
        .startswith("materialize: 2 views, 8 entity rows (8 written, 0 skipped), 16 values in")
    )


def test_an_empty_window_writes_nothing_and_says_so(
    repo: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    early = (START - timedelta(days=30)).isoformat()
    code, out, _ = run_cli(capsys, "--repo", str(repo), "--start", early, "--end", early)
    assert code == 0
    assert "no rows in the window: nothing written" in out
    assert snapshot(redis_url) == {}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda repo: (repo / "data" / "rides.parquet").unlink(), "rides.parquet"),
        (
            lambda repo: (repo / "data" / "rides.parquet").write_bytes(b"not parquet"),
            "rides.parquet",
        ),
        (
            lambda repo: pq.write_table(
                _rides().set_column(5, "kind", pa.array([1] * 8)), repo / "data" / "rides.parquet"
            ),
            "column 'kind' is int64, but feature view 'rides' declares 'kind' as String",
        ),
        (
            lambda repo: pq.write_table(
                _rides().drop_columns(["trips"]), repo / "data" / "rides.parquet"
            ),
            "no column 'trips'",
        ),
        (
            lambda repo: pq.write_table(
                _rides().set_column(0, "driver_id", pa.array([1, None] * 4, pa.int64())),
                repo / "data" / "rides.parquet",
            ),
            "join key column 'driver_id' has",
        ),
    ],
)
def test_bad_data_is_one_line_naming_the_file_or_column(
    repo: Path, capsys: pytest.CaptureFixture[str], damage: Any, message: str
) -> None:
    damage(repo)
    code, _, err = run_cli(
        capsys, "--repo", str(repo), "--start", START.isoformat(), "--end", END.isoformat()
    )
    assert code == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_unreachable_redis_is_one_line_naming_the_url(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARRARA_REDIS_PASSWORD", "pw")
    url = f"redis://127.0.0.1:{free_port()}/0"
    code, _, err = run_cli(
        capsys,
        "--repo",
        str(repo),
        "--start",
        START.isoformat(),
        "--end",
        END.isoformat(),
        "--redis-url",
        url,
    )
    assert code == 1
    assert url in err
    assert "pw" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_password_on_the_command_line_is_refused(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        run_cli(capsys, "--repo", str(repo), "--incremental", "--redis-url", "redis://:s3cret@h:1")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "CARRARA_REDIS_PASSWORD" in err
    assert "s3cret" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--start", END.isoformat(), "--end", START.isoformat()], "is after --end"),
        (["--start", START.isoformat()], "--start needs --end"),
        (
            ["--start", START.isoformat(), "--end", END.isoformat(), "--views", "nope"],
            "unknown feature views ['nope']",
        ),
    ],
)
def test_bad_arguments_are_usage_errors(
    repo: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, _, err = run_cli(capsys, "--repo", str(repo), *args)
    assert code == 2
    assert message in err


# --- interrupted runs ---------------------------------------------------------------------


def _interrupt_after(batches: int, action: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real = materialize_module._row_batches

    def interrupted(*args: Any) -> Iterator[FramedRows]:
        for i, batch in enumerate(real(*args)):
            if i == batches:
                action()
            yield batch

    monkeypatch.setattr(materialize_module, "_row_batches", interrupted)
    monkeypatch.setattr(materialize_module, "WRITE_ROWS", 1)


def _clean_state(repo: Path, url: str) -> Snapshot:
    materialize(repo, START, END)
    state = snapshot(url)
    redis.Redis.from_url(url).flushall()
    return state


def test_a_run_interrupted_between_batches_reruns_to_the_same_state(
    repo: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = _clean_state(repo, redis_url)

    def ctrl_c() -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        _interrupt_after(2, ctrl_c, patch)
        with pytest.raises(KeyboardInterrupt):
            materialize(repo, START, END)
    assert len(snapshot(redis_url)) < len(clean)  # cut short (sent batches may have run)
    materialize(repo, START, END)
    assert snapshot(redis_url) == clean


def test_a_run_cut_by_a_redis_restart_reruns_to_the_same_state(
    repo: Path,
    redis_server: RedisProcess,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clean = _clean_state(repo, redis_url)
    with monkeypatch.context() as patch:
        _interrupt_after(2, redis_server.stop, patch)
        code, _, err = run_cli(
            capsys, "--repo", str(repo), "--start", START.isoformat(), "--end", END.isoformat()
        )
    assert code == 1
    assert "Redis at redis://127.0.0.1" in err
    assert len(err.strip().splitlines()) == 1
    redis_server.start()
    materialize(repo, START, END)
    assert snapshot(redis_url) == clean
