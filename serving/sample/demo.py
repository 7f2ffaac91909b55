"""`carrara demo`: the whole loop on a private Redis, from sample data to served predictions.

Runs the commands' steps in order through the library (sample data, apply, materialize, train
pricing and eta), then starts the gRPC server in this process on a free loopback port, sends
example pricing and ETA requests through a real channel, measures latency, watches the
served ETA model through its prediction log (watching.py: a planted traffic change, outcomes,
evaluate and monitor), and shuts everything down (also on Ctrl-C). Nothing is left running;
the Parquet files, the plan, the trained models and the prediction log stay for you to
explore (`carrara models list`, `carrara monitor --model eta --log feature_repo/data/...`).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from serving.client import Column, PredictionClient
from serving.models.card import comparison_lines
from serving.models.registry import ModelRegistry
from serving.online.server import Server, ServerSettings
from serving.pb.carrara.v1 import prediction_pb2 as pb
from serving.sample import live
from serving.sample.watching import watch
from serving.store.redis_process import private_redis

LATENCY_CALLS = 300


@dataclass(frozen=True)
class DemoSettings:
    repo: Path
    registry: Path
    drivers: int = 2_000
    hours: int = 30
    trips: int = 6_000
    surge_observations: int = 4_000


def run_demo(settings: DemoSettings) -> int:
    with (
        tempfile.TemporaryDirectory(prefix="carrara-demo-") as workdir,
        private_redis(Path(workdir)) as redis_server,
    ):
        step(f"private redis-server on {redis_server.url} (pid {redis_server.pid})")
        _build_world(settings, redis_server.url)
        server = Server(
            ServerSettings(
                repo=settings.repo,
                registry=settings.registry,
                port=0,
                threads=4,
                redis_url=redis_server.url,
                prediction_log=settings.repo / "data" / "prediction-log",
                drift_window_rows=10_000,
            )
        )
        port = server.start()
        try:
            step(f"gRPC server on 127.0.0.1:{port}, ready in {server.build_s:.2f} s")
            _replay(settings.repo, redis_server.url)
            with PredictionClient(f"127.0.0.1:{port}") as client:
                _example_requests(client, settings.repo, ModelRegistry(settings.registry))
                _burst(client)
                _latency_table(client, settings.repo)
            watch(server, settings.repo, redis_server.url)  # watching.py: log, drift, accuracy
        finally:
            server.stop()
    step("server and redis-server stopped; nothing left running")
    return 0


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _build_world(settings: DemoSettings, redis_url: str) -> None:
    """Each step through the library call its command makes, printing what it did."""
    from serving.batch.materialize import materialize
    from serving.models.registry import ModelRegistry
    from serving.repo.compile import apply_repo
    from serving.repo.model_kinds import model_kind
    from serving.sample.world import WorldSpec, generate
    from serving.training.train import train

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    spec = WorldSpec(
        out=settings.repo / "data",
        drivers=settings.drivers,
        hours=settings.hours,
        end=now.replace(minute=now.minute - now.minute % 5),
        trips=settings.trips,
        surge_observations=settings.surge_observations,
    ).validated()
    step(f"sample data: {settings.drivers:,} drivers, {settings.hours} hours -> {spec.out}")
    counts = generate(spec)
    print(f"  {sum(counts.values()):,} rows in {len(counts)} tables")
    step(f"apply: Feast apply and the serving plan of {settings.repo}")
    plan = apply_repo(settings.repo)
    print(f"  {len(plan.feature_views)} feature views, {len(plan.feature_services)} services")
    step("materialize the last 3 days into the private Redis")
    report = materialize(settings.repo, start=now - timedelta(days=3), end=now, redis_url=redis_url)
    print(f"  {report.entity_rows:,} entity rows, {report.written:,} written")
    registry = ModelRegistry(settings.registry)
    for kind in ("pricing", "eta"):
        step(f"train {kind}: point-in-time training set, LightGBM, holdout report")
        result = train(model_kind(settings.repo, kind), settings.repo, registry)
        reg = result.registration
        print(f"  registered {reg.name}:{reg.version} as {reg.name}@{reg.alias}")
    _promote_latest(registry)


def _promote_latest(registry: ModelRegistry) -> None:
    """On a second run the new versions start as staging: serve what this run trained."""
    for name in registry.names():
        latest = registry.versions(name)[-1]
        if registry.aliases(name).get("production") != latest:
            change = registry.promote(name, latest, "production")
            print(f"  promoted {name}:{latest} to production (was {change.before})")


def _examples(repo: Path, rows: int) -> tuple[dict[str, list[int]], dict[str, Column]]:
    """The last `rows` trips of the sample world as a request, asked about now."""
    trips = pq.read_table(repo / "data" / "trips.parquet").to_pandas().tail(rows)
    entities = {
        c: trips[c].astype(int).tolist() for c in ("driver_id", "pickup_zone_id", "dropoff_zone_id")
    }
    now = int(time.time())
    request: dict[str, Column] = {
        c: trips[c].astype(float).tolist()
        for c in ("pickup_lat", "pickup_lon", "dropoff_lat", "dropoff_lon")
    }
    request["request_ts_s"] = [now] * rows
    return entities, request


PRICING_SHOWN = (
    "zone_activity__sum_trip_requested_60s",
    "zone_activity__sum_driver_available_60s",
    "zone_pressure__pressure_1m",
    "zone_pressure__pressure_5m",
    "zone_stats__demand_supply_ratio",
    "zone_stats__surge_15m",
)
BURST_ZONE, BURST_REQUESTS = 27, 40


def _replay(repo: Path, redis_url: str) -> None:
    step(
        f"live: the last {live.REPLAY_MINUTES} minutes of zone events, moved to end now, "
        f"through the Redis Stream {live.STREAM!r} and `carrara ingest` into zone_activity"
    )
    done = live.replay(repo, redis_url)
    rate = done.events / done.seconds if done.seconds else 0.0
    print(f"  {done.events:,} events in {done.seconds:.2f} s ({rate:,.0f}/s), {done.dead} dead")


def _pricing(client: PredictionClient, zones: list[int]) -> pb.PredictResponse:
    now = int(time.time())
    return client.predict("pricing", {"zone_id": zones}, {"request_ts_s": [now] * len(zones)}, True)


def _example_requests(client: PredictionClient, repo: Path, registry: ModelRegistry) -> None:
    step("Predict(pricing): surge multiplier for three zones, now (1-minute windows live)")
    pricing = _pricing(client, [0, BURST_ZONE, 63])
    _print_reply(pricing, PRICING_SHOWN, {})
    card = registry.card(f"pricing:{pricing.model_version}")
    for line in comparison_lines(card, {"pricing_v1": "batch features only, same learner"}):
        print(f"  holdout: {line}")
    step("Predict(eta): trip duration for two trips")
    entities, request = _examples(repo, 2)
    eta = client.predict("eta", entities, request, return_features=True)
    _print_reply(
        eta,
        (
            "trip_geometry__haversine_km",
            "pickup_zone__traffic_index",
            "driver_stats__avg_speed_kph_7d",
            "driver_stats__vehicle_type",
            "route_stats__avg_duration_s_7d",
        ),
        registry.card(f"eta:{eta.model_version}").categorical_levels,
    )


def _burst(client: PredictionClient) -> None:
    step(f"Push: {BURST_REQUESTS} trip requests into zone {BURST_ZONE} in the last 30 s")
    before = _pricing(client, [BURST_ZONE])
    live.burst(client, BURST_ZONE, BURST_REQUESTS)
    after = _pricing(client, [BURST_ZONE])
    shown = PRICING_SHOWN[:3]
    for label, reply in (("before", before), ("after", after)):
        names = list(reply.feature_names)
        row = reply.features[0].values
        parts = ", ".join(
            f"{n.split('__')[-1]}={_fmt(row[names.index(n)], None)}" for n in shown if n in names
        )
        print(f"  {label:<6} surge {reply.predictions[0]:.3f}  {parts}")


def _print_reply(
    reply: pb.PredictResponse, shown: Sequence[str], levels: Mapping[str, Sequence[str]]
) -> None:
    names = list(reply.feature_names)
    print(f"  model {reply.model} version {reply.model_version}")
    for row, prediction in enumerate(reply.predictions):
        values = reply.features[row].values
        parts = [
            f"{name.split('__')[-1]}={_fmt(values[names.index(name)], levels.get(name))}"
            for name in shown
            if name in names
        ]
        missing = reply.missing_features[row]
        print(f"  row {row}: prediction {prediction:,.3f} (missing {missing}) " + ", ".join(parts))


def _fmt(value: float, levels: Sequence[str] | None) -> str:
    """A feature as the model saw it; a categorical code shown as its level."""
    if math.isnan(value):
        return "missing"
    return repr(levels[int(value)]) if levels else f"{value:.4g}"


def _latency_table(client: PredictionClient, repo: Path) -> None:
    step(f"latency: {LATENCY_CALLS} sequential Predict calls each, one process, loopback")
    print(f"  {'request':<22} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for rows in (1, 10, 100):
        entities, request = _examples(repo, rows)
        _time(
            f"eta, {rows} row{'s' if rows > 1 else ''}",
            partial(client.predict, "eta", entities, request),
        )
    _time(
        "pricing, 1 row",
        lambda: client.predict("pricing", {"zone_id": [5]}, {"request_ts_s": [int(time.time())]}),
    )


def _time(label: str, call: Callable[[], object]) -> None:
    for _ in range(20):
        call()
    samples = np.empty(LATENCY_CALLS)
    for i in range(LATENCY_CALLS):
        started = time.perf_counter_ns()
        call()
        samples[i] = time.perf_counter_ns() - started
    p50, p99 = np.percentile(samples, [50, 99]) / 1e6
    print(f"  {label:<22} {p50:>8.2f} {p99:>8.2f} {samples.max() / 1e6:>8.2f}")
