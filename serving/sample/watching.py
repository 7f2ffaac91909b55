"""The demo's last step: watch the served ETA model, through its prediction log.

Replays trips of the sample world as ETA traffic (request id `trip-<id>`), plants a traffic
change (zone_stats.traffic_index raised in half the zones, written to Redis as a fresh row),
replays more trips, then: outcomes for that traffic (each trip's real duration, from the
world's trips table), `evaluate` (live error beside the holdout's) and `monitor` (the
shifted traffic against the traffic before it: exactly the two traffic_index features, as
pickup and dropoff zone, should alert).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pyarrow.parquet as pq

from serving.client import to_values
from serving.models.registry import ModelRegistry
from serving.monitoring.evaluate import OutcomeSpec, evaluate, render
from serving.monitoring.report import html, log_drift, summary
from serving.online.server import Server
from serving.pb.carrara.v1 import prediction_pb2 as pb
from serving.pb.carrara.v1 import prediction_pb2_grpc as pb_grpc
from serving.repo.plan import RepoFiles, load_plan
from serving.store import encoding
from serving.store.online_store import OnlineStore
from serving.store.settings import RedisSettings
from serving.store.write_guard import RowBatch

TRIPS_PER_WINDOW = 1_500
TRAFFIC_FACTOR = 1.6  # the planted change: traffic_index x this in every other zone
REQUEST_FIELDS = ("pickup_lat", "pickup_lon", "dropoff_lat", "dropoff_lon")


def watch(server: Server, repo: Path, redis_url: str) -> None:
    """Traffic, a planted shift, more traffic; then evaluate and monitor print their reports."""
    from serving.sample.demo import step

    log_dir = server.settings.prediction_log
    if log_dir is None or server.tap is None:
        return
    trips = pq.read_table(repo / "data" / "trips.parquet").to_pandas()
    rng = np.random.default_rng(17)
    step(f"traffic: {TRIPS_PER_WINDOW:,} ETA calls replaying trips, logged to {log_dir}")
    started = datetime.now(UTC)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.PredictionServiceStub(channel)  # type: ignore[no-untyped-call]
        _replay(stub, trips.iloc[rng.integers(0, len(trips), TRIPS_PER_WINDOW)])
        shifted_at = datetime.now(UTC)
        zones = _plant_traffic_change(repo, redis_url)
        step(f"planted: traffic_index x{TRAFFIC_FACTOR} in {zones} zones; as much traffic again")
        _replay(stub, trips.iloc[rng.integers(0, len(trips), TRIPS_PER_WINDOW)])
    server.tap.flush()
    outcomes = log_dir.parent / "outcomes.parquet"
    _write_outcomes(trips, outcomes)
    step(f"carrara evaluate: logged predictions joined with the trips' durations ({outcomes})")
    registry = ModelRegistry(server.settings.registry)
    print(render(evaluate(log_dir, "eta", OutcomeSpec(outcomes), registry, since=started)))
    page = log_dir.parent / "monitor-eta.html"
    step(f"carrara monitor --baseline-until {shifted_at:%H:%M:%S}: after the change vs before")
    reports = log_drift(log_dir, "eta", registry, since=started, baseline_until=shifted_at)
    page.write_text(html(reports), encoding="utf-8")
    print(summary(reports, str(page)))


def _replay(stub: pb_grpc.PredictionServiceStub, trips: pd.DataFrame) -> None:
    """One 1-row call per trip, asked about now, under the trip's id (x-request-id)."""
    now = int(time.time())
    for trip in trips.itertuples():
        request = pb.PredictRequest(
            model="eta",
            entities={
                key: to_values([int(getattr(trip, key))])
                for key in ("driver_id", "pickup_zone_id", "dropoff_zone_id")
            },
            request_data={
                **{c: to_values([float(getattr(trip, c))]) for c in REQUEST_FIELDS},
                "request_ts_s": to_values([now]),
            },
        )
        stub.Predict(request, timeout=5, metadata=[("x-request-id", f"trip-{trip.trip_id}")])


def _plant_traffic_change(repo: Path, redis_url: str) -> int:
    """traffic_index x TRAFFIC_FACTOR in every other zone, written as of now; how many."""
    plan = load_plan(RepoFiles.locate(repo))
    zones = pq.read_table(repo / "data" / "zone_stats.parquet").to_pandas()
    latest = zones.sort_values("event_timestamp").groupby("zone_id").tail(1)
    changed = latest[latest.zone_id % 2 == 0]
    ids = changed.zone_id.astype(np.int64).tolist()
    values = changed.traffic_index.to_numpy(np.float64) * TRAFFIC_FACTOR
    batch = RowBatch(
        encoding.encode_entity_keys(["zone_id"], ["Int64"], [ids], plan.project),
        encoding.encode_timestamps(np.full(len(ids), int(time.time() * 1e6), np.int64)),
        [encoding.encode_values("Float64", values)],
    )
    store = OnlineStore(RedisSettings(redis_url), plan.project)
    try:
        store.write_view("zone_stats", ["traffic_index"], [batch])
    finally:
        store.close()
    return len(ids)


def _write_outcomes(trips: pd.DataFrame, path: Path) -> None:
    """Each trip's real duration under the request id its replay was logged with."""
    outcomes = pd.DataFrame(
        {"request_id": "trip-" + trips.trip_id.astype(str), "duration_s": trips.duration_s}
    )
    outcomes.to_parquet(path, index=False)
