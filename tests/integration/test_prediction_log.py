"""The prediction log and the served PSI gauges, on a real server, Redis and registry.

Every wait is explicit: the log's queue is drained and its files written by `tap.flush()`,
never by sleeping until its thread gets there.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from serving.client import to_values
from serving.errors import UsageError
from serving.monitoring.parquet_log import LogSettings, ParquetLog
from serving.monitoring.prediction_log import PredictionRecord, PredictionTap
from serving.online.server import Server, ServerSettings
from serving.pb.carrara.v1 import prediction_pb2 as pb
from serving.pb.carrara.v1 import prediction_pb2_grpc as pb_grpc
from serving.store.redis_process import RedisProcess
from tests.helpers import RPC_TIMEOUT_S, materialize_world, raw_redis

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

ENTITIES = ("driver_id", "pickup_zone_id", "dropoff_zone_id")
REQUEST = ("pickup_lat", "pickup_lon", "dropoff_lat", "dropoff_lon", "request_ts_s")
DRIFT_ROWS = 200


@pytest.fixture(scope="module")
def logging_server(
    applied_repo: Path,
    trained_registry: Path,
    redis_server: RedisProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """A server logging every Predict, with a small drift window."""
    if redis_server.process is None:
        redis_server.start()
    raw_redis(redis_server.url).flushall()  # whatever a module before left: written anew
    materialize_world(applied_repo, redis_server.url)
    settings = ServerSettings(
        repo=applied_repo,
        registry=trained_registry,
        port=0,
        redis_url=redis_server.url,
        metrics_port=0,
        prediction_log=tmp_path_factory.mktemp("log") / "predictions",
        drift_window_rows=DRIFT_ROWS,
    )
    server = Server(settings)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stub(logging_server: Server) -> Iterator[pb_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{logging_server.port}") as channel:
        yield pb_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def trips(applied_repo: Path) -> pd.DataFrame:
    return pd.read_parquet(applied_repo / "data" / "trips.parquet").tail(50)


def eta_request(trips: pd.DataFrame, **overrides: list[float]) -> pb.PredictRequest:
    request = {c: trips[c].astype(float).tolist() for c in REQUEST[:-1]}
    request["request_ts_s"] = trips["request_ts_s"].astype(int).tolist()
    request.update(overrides)
    return pb.PredictRequest(
        model="eta",
        entities={c: to_values(trips[c].astype(int).tolist()) for c in ENTITIES},
        request_data={k: to_values(v) for k, v in request.items()},
        return_features=True,
    )


def logged(server: Server) -> pd.DataFrame:
    assert server.tap is not None
    server.tap.flush()
    root = server.settings.prediction_log
    assert root is not None
    return pd.read_parquet(root)


def test_every_row_is_logged_with_its_request_reply_and_features(
    logging_server: Server, stub: pb_grpc.PredictionServiceStub, trips: pd.DataFrame
) -> None:
    request = eta_request(trips.head(3))
    reply, call = stub.Predict.with_call(
        request, metadata=[("x-request-id", "trip-42")], timeout=RPC_TIMEOUT_S
    )
    assert ("x-request-id", "trip-42") in call.trailing_metadata()
    rows = logged(logging_server)
    mine = rows[rows.request_id == "trip-42"].sort_values("row")
    assert list(mine.row) == [0, 1, 2]
    assert list(mine.prediction) == list(reply.predictions)
    assert set(mine.version) == {"1"}
    assert set(mine.alias) == {"production"}
    assert set(mine.role) == {"primary"}
    assert set(mine.model.astype(str)) == {"eta"}
    assert list(mine["entity.driver_id"]) == trips.head(3).driver_id.tolist()
    assert list(mine["request.request_ts_s"]) == trips.head(3).request_ts_s.tolist()
    for name in reply.feature_names:
        np.testing.assert_array_equal(
            mine[f"feature.{name}"].to_numpy(),
            [row.values[list(reply.feature_names).index(name)] for row in reply.features],
        )
    status = mine["status.trip_geometry__haversine_km"].astype(str)
    assert set(status) == {"PRESENT"}
    assert (mine.latency_ms > 0).all()
    assert list(mine.missing_features) == list(reply.missing_features)


def test_a_request_without_an_id_gets_one_back_and_is_logged_under_it(
    logging_server: Server, stub: pb_grpc.PredictionServiceStub, trips: pd.DataFrame
) -> None:
    _reply, call = stub.Predict.with_call(eta_request(trips.head(1)), timeout=RPC_TIMEOUT_S)
    ids = [value for key, value in call.trailing_metadata() if key == "x-request-id"]
    assert len(ids) == 1
    assert ids[0]
    rows = logged(logging_server)
    assert (rows.request_id == ids[0]).sum() == 1


def test_the_log_is_hourly_partitioned_parquet_that_pyarrow_reads(
    logging_server: Server, stub: pb_grpc.PredictionServiceStub, trips: pd.DataFrame
) -> None:
    stub.Predict(eta_request(trips.head(2)), timeout=RPC_TIMEOUT_S)
    logged(logging_server)
    root = logging_server.settings.prediction_log
    assert root is not None
    files = sorted(root.glob("model=eta/date=*/hour=*/part-*.parquet"))
    assert files
    assert not list(root.rglob(".*.tmp"))  # every file written was renamed into place
    table = ds.dataset(root, format="parquet", partitioning="hive").to_table()
    assert {"model", "date", "hour", "request_id", "prediction"} <= set(table.column_names)
    assert pq.read_table(files[-1]).num_rows > 0


def test_served_psi_flags_a_planted_shift_and_not_an_unshifted_request_feature(
    logging_server: Server, stub: pb_grpc.PredictionServiceStub, trips: pd.DataFrame
) -> None:
    far = [lat + 0.5 for lat in trips.dropoff_lat.astype(float)]  # ~55 km trips: a shift
    for _ in range(DRIFT_ROWS // len(trips)):
        stub.Predict(eta_request(trips, dropoff_lat=far), timeout=RPC_TIMEOUT_S)
    assert logging_server.tap is not None
    logging_server.tap.flush()
    url = f"http://127.0.0.1:{logging_server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=RPC_TIMEOUT_S).read().decode()
    psi = {
        line.split('feature="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("carrara_feature_psi{") and 'model="eta"' in line
    }
    assert psi["trip_geometry__haversine_km"] >= 0.2  # alert
    assert "carrara_prediction_log_dropped_total" in text


def test_a_full_queue_drops_and_counts_and_never_blocks() -> None:
    drops: list[tuple[str, int]] = []
    tap = PredictionTap([], lambda reason, rows: drops.append((reason, rows)), capacity=2)
    for i in range(5):
        tap.offer(record(f"r{i}", rows=3))
    assert tap.dropped == 3
    assert drops == [("queue_full", 3)] * 3


def test_a_write_that_fails_is_counted_and_the_files_before_it_stay_readable(
    tmp_path: Path,
) -> None:
    root = tmp_path / "log"
    drops: list[tuple[str, int]] = []
    writer = ParquetLog(LogSettings(root), lambda reason, rows: drops.append((reason, rows)))
    writer.consume([record("before", rows=2)])
    writer.flush()
    written = list(root.rglob("part-*.parquet"))
    model_dir = root / "model=eta"
    model_dir.rename(tmp_path / "moved")
    model_dir.write_text("not a folder")  # the next write cannot make its folder
    writer.consume([record("after", rows=4)])
    writer.flush()  # logs the failure once; raises nothing
    assert drops == [("write_failed", 4)]
    moved = [tmp_path / "moved" / p.relative_to(model_dir) for p in written]
    assert pd.read_parquet(moved[0]).request_id.tolist() == ["before", "before"]


def test_an_unwritable_log_folder_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match=r"--prediction-log .*file/log: cannot write there"):
        ParquetLog(LogSettings(blocker / "log"))


def record(request_id: str, rows: int) -> PredictionRecord:
    return PredictionRecord(
        request_id=request_id,
        time_s=1_796_000_000.0,
        model="eta",
        version="1",
        alias="production",
        role="primary",
        entities={"driver_id": list(range(rows))},
        request_data={"request_ts_s": [1_796_000_000] * rows},
        feature_names=("a__x",),
        features=np.ones((rows, 1)),
        predictions=np.zeros(rows),
        missing=np.zeros(rows, dtype=np.int32),
        degraded=False,
        latency_ms=1.0,
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--log-sample-rate", "1.5"], "--log-sample-rate must be above 0 and at most 1"),
        (["--log-retention-hours", "0"], "--log-retention-hours must be above 0"),
        (["--prediction-log", "{blocker}/log"], "{blocker}/log: cannot write there"),
    ],
)
def test_serve_refuses_bad_log_settings_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    from serving.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    args = [f.format(blocker=blocker) for f in flags]
    code = main(["serve", "--repo", str(tmp_path / "no-repo"), "--port", "0", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message.format(blocker=blocker) in err
    assert len(err.strip().splitlines()) == 1


def test_hours_older_than_the_retention_are_deleted_as_files_are_written(tmp_path: Path) -> None:
    root = tmp_path / "log"
    old = root / "model=eta" / "date=2020-01-01" / "hour=05"
    old.mkdir(parents=True)
    (old / "part-old.parquet").write_bytes(b"")
    other = root / "notes"  # not an hour folder: left alone
    other.mkdir()
    writer = ParquetLog(LogSettings(root, retention_hours=24))
    recent = record("now", rows=1)
    recent.time_s = time.time()
    writer.consume([recent])
    writer.flush()
    assert not old.exists()
    assert other.exists()
    assert pd.read_parquet(root).request_id.tolist() == ["now"]
