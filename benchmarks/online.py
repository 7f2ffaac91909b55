"""Benchmark: Carrara's online `Predict` against the gRPC floor, the naive Feast pipeline and
Feast's own gRPC feature server, measured in one run on one private world.

The run starts its own redis-server on a free loopback port, writes a sample world (fixed
seed) ending at a fixed time, `carrara apply`s it and trains both models on it (or copies a
registry given with --models), so the served trees are the same in every run; then rewrites
the same world ending now and materializes it (fresh features), and measures from separate
client processes, each target in turn:
  echo     a bare grpcio echo server (benchmarks/echo.py), same sync thread-pool server as
           Carrara's: the floor; its payload is the ETA 1-row request's bytes;
  carrara  `carrara serve` (a separate process tree), `Predict` for pricing and ETA at 1, 10
           and 100 rows, once per --processes value;
  naive    in the client process: FeatureStore.get_online_features of the model's features
           and its on-demand features for the rows, then Booster.predict: what a user writes;
  feast    `feast listen` (Feast's gRPC feature server) GetOnlineFeatures of the model's
           stored features (it cannot take request data, so no on-demand ones; see README).
Each target gets a latency phase (one client, calls one at a time, warm-up, bounded by count
and time: p50/p90/p99/max) and a throughput phase (--clients processes in closed loops for a
fixed time: calls/s, tail under load, CPU per call of the server and of the clients).
Predictions of the naive pipeline and of Carrara are compared on the same rows.

    python -m benchmarks.online [--small] [--models DIR] [--processes 1,2] [--clients 4]
                                [--concurrency-study] [--out benchmarks/out/online.json]

Every process it starts (redis-server, servers and their children, client workers) is stopped
by its pid on the way out, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    ROOT,
    cpu_seconds,
    descendants,
    latency,
    redis_server,
    run_child,
    stamp,
    stop_tree,
    table,
    timed_calls,
    write_json,
)
from serving.ports import free_port

BIN = Path(sys.executable).parent
SEED = 20261127
# Models are trained on a world ending at this fixed time, so that the same trees are served in
# every run (its tree count drives scoring time); the served world then ends now, fresh.
TRAIN_END = datetime(2026, 11, 1, tzinfo=UTC)
# This box is shared: a phase during which other processes used more than this share of the
# machine is run again (bounded by Config.attempts); the least disturbed run is kept.
OTHERS_LIMIT = 0.15
MODELS = ("pricing", "eta")
FEAST_WORKERS = 8  # `feast listen -w`, as in every earlier run
STARTED_PIDS: list[int] = []  # every process this run started or saw its servers start
# Benchmark-only feature services appended to the private repo copy: each model's stored
# features, what `feast listen` can serve (it cannot take the request data of on-demand views).
STORED_SERVICES = """

bench_pricing_stored = FeatureService(
    name="bench_pricing_stored", features=[zone_stats, zone_activity]
)
bench_eta_stored = FeatureService(
    name="bench_eta_stored",
    features=[
        driver_stats,
        zone_stats.with_name("pickup_zone").with_join_key_map({"zone_id": "pickup_zone_id"}),
        zone_stats.with_name("dropoff_zone").with_join_key_map({"zone_id": "dropoff_zone_id"}),
        route_stats,
    ],
)
"""


@dataclass(frozen=True)
class Config:
    small: bool
    world: dict[str, int]  # carrara sample-data sizes
    rows: tuple[int, ...]
    processes: tuple[int, ...]
    threads: int
    clients: int
    connections: int  # channels per client process (spread over SO_REUSEPORT processes)
    warmup: int
    latency_calls: int
    latency_s: float
    throughput_s: float
    pool: int  # distinct requests per (model, rows), cycled
    attempts: int  # runs of a phase while other processes disturb it (see OTHERS_LIMIT)


FULL_WORLD = {"drivers": 5000, "zones": 64, "hours": 30, "trips": 4000, "surge-observations": 3000}
SMALL_WORLD = {"drivers": 300, "zones": 16, "hours": 30, "trips": 4000, "surge-observations": 3000}


def config(args: argparse.Namespace) -> Config:
    base = Config(
        small=args.small,
        world=SMALL_WORLD if args.small else FULL_WORLD,
        rows=(1, 10) if args.small else (1, 10, 100),
        processes=tuple(args.processes),
        threads=args.threads,
        clients=args.clients,
        connections=4,
        warmup=20 if args.small else 200,
        latency_calls=50 if args.small else 3000,
        latency_s=0.5 if args.small else 6.0,
        throughput_s=0.5 if args.small else 5.0,
        pool=8 if args.small else 64,
        attempts=1 if args.small else 3,
    )
    return replace(base, clients=min(base.clients, 2)) if args.small else base


# --- the world --------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    repo: Path
    registry: Path
    redis_url: str
    redis_pids: list[int]
    end: datetime
    models: dict[str, dict[str, Any]]  # name -> version, trees, features


def prepare_world(cfg: Config, work: Path, redis_port: int, models: Path | None) -> World:
    repo = work / "repo"
    shutil.copytree(
        ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__")
    )
    yaml = (repo / "feature_store.yaml").read_text()
    (repo / "feature_store.yaml").write_text(
        yaml.replace('"127.0.0.1:6379"', f'"127.0.0.1:{redis_port}"')
    )
    with (repo / "definitions.py").open("a") as f:
        f.write(STORED_SERVICES)
    sizes = [a for k, v in cfg.world.items() for a in (f"--{k}", str(v))]
    data = ["sample-data", "--out", str(repo / "data"), "--seed", "7", *sizes, "--end"]
    _carrara(*data, TRAIN_END.isoformat())
    _carrara("apply", "--repo", str(repo))
    registry = work / "models"
    if models is not None:
        shutil.copytree(models, registry)
    for name in MODELS:
        if models is None or not (registry / name).is_dir():
            _carrara("train", name, "--repo", str(repo), "--registry", str(registry))
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    end = now.replace(minute=now.minute - now.minute % 5)
    _carrara(*data, end.isoformat())  # the same world, ending now: features are fresh
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    start = end - timedelta(hours=cfg.world["hours"] + 24)
    window = ["--start", start.isoformat(), "--end", datetime.now(UTC).isoformat()]
    _carrara("materialize", "--repo", str(repo), *window, "--redis-url", redis_url)
    facts = {m: _model_facts(registry, m) for m in MODELS}
    redis = redis_pids()
    STARTED_PIDS.extend(redis)
    return World(repo, registry, redis_url, redis, end, facts)


def _carrara(*args: str) -> None:
    run = run_child([str(BIN / "carrara"), *args], cwd=ROOT, timeout_s=900)
    if run.returncode:
        raise RuntimeError(f"carrara {args[0]} failed:\n{run.stderr[-3000:]}")
    print(f"  carrara {args[0]}{' ' + args[1] if args[0] == 'train' else ''}: {run.wall_s:.1f} s")


def _model_facts(registry: Path, name: str) -> dict[str, Any]:
    from serving.models.registry import ModelRegistry

    _name, version = ModelRegistry(registry).resolve(name)
    folder = registry / name / str(version)
    card = json.loads((folder / "model.json").read_text())
    return {
        "version": version,
        "trees": (folder / "model.txt").read_text().count("\nTree="),
        "features": len(card["feature_refs"]),
        "entities": [c["name"] for c in card["entities"]],
        "request_fields": [c["name"] for c in card["request_fields"]],
    }


Inputs = tuple[dict[str, list[Any]], dict[str, list[Any]]]  # (entities, request_data)


def request_pool(world: World, model: str, rows: int, count: int) -> list[Inputs]:
    """`count` requests of `rows` rows each: trips of the world (ETA) or zones (pricing), drawn
    with a fixed seed; request time is now."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(SEED + rows)
    now_s = int(time.time())
    facts = world.models[model]
    if model == "eta":
        frame = pd.read_parquet(world.repo / "data" / "trips.parquet")
    else:
        frame = pd.DataFrame({"zone_id": np.arange(_zones(world))})
    pool = []
    for _ in range(count):
        sample = frame.iloc[rng.integers(0, len(frame), rows)]
        entities = {c: [int(v) for v in sample[c]] for c in facts["entities"]}
        data = {
            c: [now_s] * rows if c == "request_ts_s" else [float(v) for v in sample[c]]
            for c in facts["request_fields"]
        }
        pool.append((entities, data))
    return pool


def _zones(world: World) -> int:
    import pyarrow.parquet as pq

    zones = pq.read_table(world.repo / "data" / "zone_stats.parquet", columns=["zone_id"])
    return int(zones.column("zone_id").to_numpy().max()) + 1


# --- servers (separate process trees) ---------------------------------------------------------


@dataclass
class Service:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    ready_s: float  # process start -> health SERVING
    all_ready_s: float  # process start -> every server process serving (carrara --processes)
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        pids = [self.process.pid, *descendants(self.process.pid)]
        STARTED_PIDS.extend(p for p in pids if p not in STARTED_PIDS)
        return pids


@contextmanager
def service(
    name: str, command: Callable[[int], list[str]], health_name: str, log: Path, **popen: Any
) -> Iterator[Service]:
    """Start `command(port)` on a free port, wait for health SERVING; stop its tree by pid."""
    for _attempt in range(3):  # the free port may be taken before the server binds it
        port = free_port()
        started = time.perf_counter()
        with log.open("ab") as out:
            process = subprocess.Popen(
                command(port),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                **popen,
            )
        STARTED_PIDS.append(process.pid)
        try:
            ready_s = _wait_serving(port, health_name, process, started)
            break
        except BaseException:
            stop_tree(process)
            if process.returncode in (None, 0, -15):  # not a failed bind: give up now
                raise
    else:
        raise RuntimeError(f"{name} did not start; see {log}:\n{log.read_text()[-2000:]}")
    svc = Service(name, port, process, ready_s, ready_s, log)
    try:
        yield svc
    finally:
        stop_tree(process)


def _wait_serving(
    port: int, health_name: str, process: subprocess.Popen[bytes], started: float
) -> float:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before SERVING")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.05).close()
        except OSError:
            time.sleep(0.005)
            continue
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=health_name), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.perf_counter() - started
            except grpc.RpcError:
                pass
        time.sleep(0.005)
    raise TimeoutError(f"no SERVING on port {port} within 120 s")


@contextmanager
def carrara_serve(repo: Path, registry: Path, work: Path) -> Iterator[Service]:
    """`carrara serve` over a repo and registry until the block ends (stopped by its pid)."""

    def command(port: int) -> list[str]:
        return [str(BIN / "carrara"), "serve", "--repo", str(repo), "--registry", str(registry),
                "--port", str(port)]  # fmt: skip

    log = work / "serve.log"
    with service("carrara", command, "carrara.v1.PredictionService", log, cwd=ROOT) as svc:
        yield svc


@contextmanager
def carrara_server(
    world: World, work: Path, processes: int, threads: int, extra: Sequence[str] = ()
) -> Iterator[Service]:
    def command(port: int) -> list[str]:
        return [
            str(BIN / "carrara"),
            "serve",
            "--repo",
            str(world.repo),
            "--registry",
            str(world.registry),
            "--redis-url",
            world.redis_url,
            "--port",
            str(port),
            "--processes",
            str(processes),
            "--threads",
            str(threads),
            *extra,
        ]

    log = work / f"serve-p{processes}-t{threads}{'-'.join(('', *extra))}.log"
    log.write_bytes(b"")
    started = time.perf_counter()
    with service("carrara", command, "carrara.v1.PredictionService", log, cwd=ROOT) as svc:
        deadline = time.monotonic() + 60  # every process prints its "serving" line when ready
        while log.read_text().count("(ready in") < processes and time.monotonic() < deadline:
            time.sleep(0.005)
        svc.all_ready_s = time.perf_counter() - started
        _check_models(svc.target)
        yield svc


def _check_models(target: str) -> None:
    import grpc

    from serving.pb.carrara.v1 import prediction_pb2 as pb
    from serving.pb.carrara.v1 import prediction_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        reply = stub.ListModels(pb.ListModelsRequest(), timeout=5)
    served = {m.name for m in reply.models}
    if not set(MODELS) <= served:
        raise RuntimeError(f"the server serves {sorted(served)}, not both of {MODELS}")


def feast_server(world: World, work: Path, workers: int = FEAST_WORKERS) -> Any:
    env = {**os.environ, "PYTHONPATH": str(world.repo)}
    return service(
        "feast listen",
        lambda port: [str(BIN / "feast"), "listen", "-a", f"127.0.0.1:{port}", "-w", str(workers)],
        "",
        work / "feast-listen.log",
        cwd=world.repo,
        env=env,
    )


def echo_server(work: Path, threads: int, mode: str = "sync") -> Any:
    from benchmarks.echo import SERVICE

    return service(
        f"echo {mode}",
        lambda port: [
            sys.executable,
            "-m",
            "benchmarks.echo",
            "--port",
            str(port),
            "--threads",
            str(threads),
            "--mode",
            mode,
        ],
        SERVICE,
        work / f"echo-{mode}.log",
        cwd=ROOT,
    )


# --- client processes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """What each client process does: build its calls (untimed), warm up, then time them."""

    kind: str  # "echo" | "carrara" | "naive" | "feast"
    model: str
    inputs: tuple[Inputs, ...]  # cycled, starting at the first
    target: str = ""  # host:port of a server
    repo: str = ""  # naive: Feast repo and model registry
    registry: str = ""
    connections: int = 1  # channels, used in turn
    warmup: int = 0
    max_calls: int = 1
    budget_s: float = 1.0
    keep_outputs: int = 0  # predictions of the first warm-up calls, for the cross-check
    naive_threads: int = 1  # naive: Booster.predict's num_threads (0: LightGBM's default)
    spread: bool = False  # each run of each client process starts at a random place in `inputs`


@dataclass
class WorkerResult:
    samples_ns: list[int]
    started_ns: int  # perf_counter_ns: CLOCK_MONOTONIC, comparable across processes on Linux
    ended_ns: int
    cpu_s: float  # the client process's own CPU time during its timed calls
    outputs: list[list[float]] = field(default_factory=list)


class ClientPool:
    """Long-lived client processes (spawned): Feast's import alone takes seconds, paid once."""

    def __init__(self, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._outbox: Any = context.Queue()
        self._workers: list[tuple[Any, Any]] = []
        try:
            for wid in range(size):
                inbox = context.Queue()
                process = context.Process(
                    target=_worker, args=(inbox, self._outbox, wid), name=f"client-{wid}"
                )
                process.start()
                STARTED_PIDS.append(process.pid or 0)
                self._workers.append((process, inbox))
        except BaseException:
            self.close()
            raise

    def run(self, job: Job, clients: int, pids: Sequence[int] = ()) -> Window:
        """`clients` processes run `job` together; CPU of `pids` watched meanwhile."""
        chosen = self._workers[:clients]
        for _process, inbox in chosen:
            inbox.put(("job", job))
        self._collect("ready", clients, timeout_s=600)
        cpu_before, box_before = _cpu_of(pids), _box_busy()
        for _process, inbox in chosen:
            inbox.put(("go", None))
        results = self._collect("done", clients, timeout_s=job.budget_s + 300)
        cpu_after, box_after = _cpu_of(pids), _box_busy()
        busy, total = (a - b for a, b in zip(box_after, box_before, strict=True))
        cpu = {pid: cpu_after.get(pid, 0.0) - cpu_before.get(pid, 0.0) for pid in cpu_before}
        return Window(results, cpu, busy / total if total else 0.0)

    def _collect(self, kind: str, count: int, timeout_s: float) -> list[Any]:
        import queue

        got: dict[int, Any] = {}
        deadline = time.monotonic() + timeout_s
        while len(got) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"client processes: {count - len(got)} not {kind} in time")
            try:
                message, wid, payload = self._outbox.get(timeout=1)
            except queue.Empty:
                dead = [p.name for p, _ in self._workers if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"client processes died: {dead}") from None
                continue
            if message == "error":
                raise RuntimeError(f"client process {wid} failed:\n{payload}")
            got[wid] = payload
        return [got[wid] for wid in sorted(got)]

    def close(self) -> None:
        """Ask each client to stop, then stop by pid any still running after 2 s."""
        for process, inbox in self._workers:
            if process.is_alive():
                inbox.put(("stop", None))
        deadline = time.monotonic() + 2
        for process, _inbox in self._workers:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
        for process, _inbox in self._workers:
            if process.is_alive():
                process.terminate()  # SIGTERM to its pid
                process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()


@dataclass
class Window:
    results: list[WorkerResult]  # per client process
    cpu_s: dict[int, float]  # CPU seconds each watched pid used meanwhile
    machine_busy: float  # share of all cores busy meanwhile, any process (ours or not)


def _cpu_of(pids: Sequence[int]) -> dict[int, float]:
    cpu = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # gone
            cpu[pid] = cpu_seconds(pid)
    return cpu


def redis_pids() -> list[int]:
    """Our redis-server (started by the harness as our child), to count its CPU too."""
    found = []
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "redis-server":
                found.append(pid)
    return found


def _box_busy() -> tuple[float, float]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return float(sum(ticks) - idle), float(sum(ticks))


def _worker(inbox: Any, outbox: Any, wid: int) -> None:
    import warnings

    warnings.simplefilter("ignore")  # Feast's experimental-feature warnings, per call
    cache: dict[Any, Any] = {}
    try:
        while True:  # until told to stop
            message, job = inbox.get()
            if message != "job":
                return
            try:
                call = CALLS[job.kind](job, cache)
                outputs = [call() for _ in range(job.warmup)]
                outbox.put(("ready", wid, None))
                if inbox.get()[0] != "go":
                    return
                cpu, started = sum(os.times()[:2]), time.perf_counter_ns()
                samples = timed_calls(call, job.max_calls, job.budget_s)
                ended, cpu = time.perf_counter_ns(), sum(os.times()[:2]) - cpu
                kept = [_predictions(o) for o in outputs[: job.keep_outputs]]
                outbox.put(("done", wid, WorkerResult(samples, started, ended, cpu, kept)))
            except Exception:
                outbox.put(("error", wid, traceback.format_exc()))
    except KeyboardInterrupt:
        return
    finally:
        for channel in cache.get("channels", (None, []))[1]:
            channel.close()


def _predictions(output: Any) -> list[float]:
    return [float(v) for v in getattr(output, "predictions", output)]


def _channels(job: Job, cache: dict[Any, Any]) -> list[Any]:
    """`job.connections` channels, each its own TCP connection (SO_REUSEPORT spreads those)."""
    import grpc

    key = (job.target, job.connections)
    held_key, held = cache.get("channels", (None, []))
    if held_key != key:
        for channel in held:
            channel.close()
        options = [("grpc.use_local_subchannel_pool", 1)]
        held = [grpc.insecure_channel(job.target, options=options) for _ in range(job.connections)]
        cache["channels"] = (key, held)
    return list(held)


def _turns(items: Sequence[Any]) -> Callable[[], Any]:
    import itertools

    return itertools.cycle(items).__next__


def predict_request(model: str, inputs: Inputs) -> Any:
    from serving.client import to_values
    from serving.pb.carrara.v1 import prediction_pb2 as pb

    entities, data = inputs
    return pb.PredictRequest(
        model=model,
        entities={k: to_values(v) for k, v in entities.items()},
        request_data={k: to_values(v) for k, v in data.items()},
    )


def _echo_call(job: Job, cache: dict[Any, Any]) -> Callable[[], Any]:
    from benchmarks.echo import echo_method

    methods = _turns([echo_method(c) for c in _channels(job, cache)])
    payload = predict_request(job.model, job.inputs[0]).SerializeToString()
    return lambda: methods()(payload, timeout=10)


def _carrara_call(job: Job, cache: dict[Any, Any]) -> Callable[[], Any]:
    from serving.pb.carrara.v1 import prediction_pb2_grpc as pb_grpc

    stubs = _turns([pb_grpc.PredictionServiceStub(c) for c in _channels(job, cache)])
    requests = [predict_request(job.model, inputs) for inputs in job.inputs]
    if job.spread:  # neither clients in step nor a phase run again replay the same requests
        start = random.randrange(len(requests))
        requests = requests[start:] + requests[:start]
    next_request = _turns(requests)
    return lambda: stubs().Predict(next_request(), timeout=10)


def _feast_call(job: Job, cache: dict[Any, Any]) -> Callable[[], Any]:
    """GetOnlineFeatures of the model's stored features (the bench_<model>_stored service)."""
    from feast.protos.feast.serving import GrpcServer_pb2_grpc as feast_grpc
    from feast.protos.feast.serving import ServingService_pb2 as serving
    from feast.protos.feast.types import Value_pb2 as value

    def repeated(column: list[int]) -> Any:  # every join key of the repo is an Int64
        return value.RepeatedValue(val=[value.Value(int64_val=v) for v in column])

    requests = _turns(
        [
            serving.GetOnlineFeaturesRequest(
                feature_service=f"bench_{job.model}_stored",
                entities={k: repeated(v) for k, v in entities.items()},
                full_feature_names=True,
            )
            for entities, _data in job.inputs
        ]
    )
    stubs = _turns([feast_grpc.GrpcFeatureServerStub(c) for c in _channels(job, cache)])
    return lambda: stubs().GetOnlineFeatures(requests(), timeout=10)


def _naive_call(job: Job, cache: dict[Any, Any]) -> Callable[[], Any]:
    """The Feast SDK in process, then Booster.predict: the strongest plain version of it."""
    import numpy as np

    store, booster, card = _naive_model(job, cache)
    refs = list(card.feature_refs)
    on_demand = {v.name for v in store.list_on_demand_feature_views()}
    views = {v.name for v in [*store.list_feature_views(), *store.list_stream_feature_views()]}
    short = [r.split("__", 1)[1] for r in refs]
    stored = [r for r in refs if r.split("__")[0] not in on_demand]
    if all(r.split("__")[0] in views for r in stored) and len(set(short)) == len(short):
        # no projections: one call, Feast's short names (Feast 0.67 drops python-mode
        # on-demand outputs when full_feature_names=True)
        calls = [([r.replace("__", ":", 1) for r in refs], False)]
        names = short
    else:  # projections need a feature service and full names, on-demand views short names
        service = store.get_feature_service(f"bench_{job.model}_stored")
        odfv = [r.replace("__", ":", 1) for r in refs if r not in stored]
        calls = [(service, True), (odfv, False)]
        names = [r if r in stored else s for r, s in zip(refs, short, strict=True)]
    codes = {
        r: {v: float(i) for i, v in enumerate(lv)} for r, lv in card.categorical_levels.items()
    }
    rows = _turns(
        [
            [
                {k: v[i] for k, v in {**entities, **data}.items()}
                for i in range(len(data[next(iter(data))]))
            ]
            for entities, data in job.inputs
        ]
    )
    nan = float("nan")
    # One thread by default, as Carrara's scorer: LightGBM's own default (OpenMP on every
    # core) is measured as a variant; it suffers whenever another process holds a core.
    threads = {"num_threads": job.naive_threads} if job.naive_threads else {}

    def call() -> Any:
        entity_rows = rows()
        got: dict[str, list[Any]] = {}
        for features, full in calls:
            response = store.get_online_features(
                features=features, entity_rows=entity_rows, full_feature_names=full
            )
            got.update(response.to_dict())
        columns = [
            [codes[ref].get(v, nan) for v in got[name]]
            if ref in codes
            else [nan if v is None else v for v in got[name]]
            for ref, name in zip(refs, names, strict=True)
        ]
        return booster.predict(np.array(columns, dtype=np.float64).T, **threads)

    return call


def _naive_model(job: Job, cache: dict[Any, Any]) -> tuple[Any, Any, Any]:
    if ("store", job.repo) not in cache:
        sys.path.insert(0, job.repo)  # the repo's on-demand functions import `transforms`
        from feast import FeatureStore

        cache["store", job.repo] = FeatureStore(repo_path=job.repo)
    if ("model", job.registry, job.model) not in cache:
        from serving.models.registry import ModelRegistry

        loaded = ModelRegistry(Path(job.registry)).load(job.model)
        cache["model", job.registry, job.model] = (loaded.booster, loaded.card)
    return (cache["store", job.repo], *cache["model", job.registry, job.model])


CALLS: dict[str, Callable[[Job, dict[Any, Any]], Callable[[], Any]]] = {
    "echo": _echo_call,
    "carrara": _carrara_call,
    "naive": _naive_call,
    "feast": _feast_call,
}


# --- measuring --------------------------------------------------------------------------------


def measure(
    pool: ClientPool,
    cfg: Config,
    world: World,
    job: Job,
    pids: Sequence[int] = (),
    clients: int | None = None,
    **labels: Any,
) -> dict[str, Any]:
    """A latency phase (one client, one call at a time) and a throughput phase (`clients`
    client processes in closed loops for a fixed time), with the CPU each side used."""
    clients = clients or cfg.clients
    quiet = replace(job, warmup=cfg.warmup, max_calls=cfg.latency_calls, budget_s=cfg.latency_s)
    alone, alone_stats = _undisturbed(pool, cfg, world, quiet, 1, pids)
    loud = replace(
        job,
        connections=cfg.connections,
        warmup=max(5, cfg.warmup // 10),
        max_calls=10**8,
        budget_s=cfg.throughput_s,
        keep_outputs=0,
    )
    window, stats = _undisturbed(pool, cfg, world, loud, clients, pids)
    return {
        **labels,
        "model": job.model,
        "rows": len(next(iter(job.inputs[0][0].values()))),
        "latency": latency(alone.results[0].samples_ns),
        "latency_others_busy": alone_stats["others_busy"],
        "clients": clients,
        **stats,
        "loaded_latency": latency([s for r in window.results for s in r.samples_ns]),
        "outputs": alone.results[0].outputs,
    }


def _undisturbed(
    pool: ClientPool, cfg: Config, world: World, job: Job, clients: int, pids: Sequence[int]
) -> tuple[Window, dict[str, Any]]:
    """Run a phase, again (up to `cfg.attempts` times in all) while other processes used more
    than OTHERS_LIMIT of the machine meanwhile; the least disturbed attempt."""
    best: tuple[Window, dict[str, Any]] = (Window([], {}, 0.0), {"others_busy": 2.0})
    attempts = 0
    while attempts < max(1, cfg.attempts):
        attempts += 1
        window = pool.run(job, clients, [*pids, *world.redis_pids])
        stats = _cpu_per_call(window, pids, world.redis_pids)
        if stats["others_busy"] < best[1]["others_busy"]:
            best = (window, stats)
        if stats["others_busy"] <= OTHERS_LIMIT or attempts >= max(1, cfg.attempts):
            break  # no wait after the last attempt: nothing follows that a quiet box would help
        _wait_for_quiet(limit_s=20)
    best[1]["attempts"] = attempts
    return best


def _wait_for_quiet(limit_s: float) -> None:
    """Until the machine is nearly idle over half a second (nothing of ours runs between
    phases), or `limit_s` has passed."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = _box_busy()
        time.sleep(0.5)
        busy, total = (a - b for a, b in zip(_box_busy(), before, strict=True))
        if total and busy / total <= OTHERS_LIMIT:
            return


def _cpu_per_call(window: Window, pids: Sequence[int], redis: Sequence[int]) -> dict[str, Any]:
    results = window.results
    calls = sum(len(r.samples_ns) for r in results)
    window_s = (max(r.ended_ns for r in results) - min(r.started_ns for r in results)) / 1e9
    server_s = [window.cpu_s.get(pid, 0.0) for pid in pids]
    redis_s = sum(window.cpu_s.get(pid, 0.0) for pid in redis)
    client_s = sum(r.cpu_s for r in results)
    ours = (sum(server_s) + redis_s + client_s) / (window_s * (os.cpu_count() or 1))
    return {
        "calls_per_s": calls / window_s,
        "server_cpu_ms_per_call": 1e3 * sum(server_s) / calls if pids else None,
        "server_cpu_s_by_process": [round(v, 2) for v in server_s],
        "redis_cpu_ms_per_call": 1e3 * redis_s / calls,
        "client_cpu_ms_per_call": 1e3 * client_s / calls,
        "machine_busy": window.machine_busy,  # any process, ours or not
        "ours_busy": ours,
        "others_busy": max(0.0, window.machine_busy - ours),
    }


def run_benchmark(
    cfg: Config, world: World, work: Path, pool: ClientPool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    inputs = {(m, n): tuple(request_pool(world, m, n, cfg.pool)) for m in MODELS for n in cfg.rows}
    cases = [(m, n) for m in MODELS for n in cfg.rows]
    keep = min(cfg.warmup, cfg.pool)
    results: list[dict[str, Any]] = []
    startup: dict[str, Any] = {}
    with echo_server(work, cfg.threads) as echo:
        job = Job("echo", "eta", inputs["eta", 1], target=echo.target)
        results.append(measure(pool, cfg, world, job, echo.pids(), target="echo", processes=1))
        print(f"  echo: {_brief(results[-1])}")
    for processes in cfg.processes:
        with carrara_server(world, work, processes, cfg.threads) as svc:
            startup[f"carrara_p{processes}"] = {
                "ready_s": svc.ready_s,
                "all_ready_s": svc.all_ready_s,
            }
            print(
                f"  carrara --processes {processes}: SERVING after {svc.ready_s:.2f} s "
                f"(all processes {svc.all_ready_s:.2f} s)"
            )
            for model, rows in cases:
                job = Job(
                    "carrara", model, inputs[model, rows], target=svc.target, keep_outputs=keep
                )
                results.append(
                    measure(
                        pool, cfg, world, job, svc.pids(), target="carrara", processes=processes
                    )
                )
                print(f"  carrara p{processes} {model} {rows}: {_brief(results[-1])}")
    for model, rows in cases:
        job = Job(
            "naive",
            model,
            inputs[model, rows],
            repo=str(world.repo),
            registry=str(world.registry),
            keep_outputs=keep,
        )
        results.append(measure(pool, cfg, world, job, target="naive", processes=None))
        print(f"  naive {model} {rows}: {_brief(results[-1])}")
        if rows == 1:  # as users call it: Booster.predict on LightGBM's default threads
            job = replace(job, naive_threads=0, keep_outputs=0)
            variant = ", default threads"
            results.append(
                measure(pool, cfg, world, job, target="naive", processes=None, variant=variant)
            )
            print(f"  naive {model} {rows}{variant}: {_brief(results[-1])}")
    with feast_server(world, work) as feast:
        startup["feast_listen"] = {"ready_s": feast.ready_s}
        print(f"  feast listen: SERVING after {feast.ready_s:.2f} s")
        for model, rows in cases:
            job = Job("feast", model, inputs[model, rows], target=feast.target)
            results.append(
                measure(pool, cfg, world, job, feast.pids(), target="feast", processes=1)
            )
            print(f"  feast listen {model} {rows}: {_brief(results[-1])}")
    return results, startup


def _brief(r: dict[str, Any]) -> str:
    lat = r["latency"]
    return (
        f"p50 {lat.p50_ms:.3f} ms, p99 {lat.p99_ms:.3f} ms, "
        f"{r['calls_per_s']:,.0f} calls/s ({r['clients']} clients; machine "
        f"{100 * r['machine_busy']:.0f}% busy, {100 * r['ours_busy']:.0f}% ours"
        + (f", best of {r['attempts']}" if r["attempts"] > 1 else "")
        + ")"
    )


def find(
    results: list[dict[str, Any]], target: str, model: str, rows: int, processes: int | None = None
) -> dict[str, Any] | None:
    for r in results:
        if (
            (r["target"], r["model"], r["rows"]) == (target, model, rows)
            and (processes is None or r["processes"] == processes)
            and "variant" not in r
        ):
            return r
    return None


def need(
    results: list[dict[str, Any]], target: str, model: str, rows: int, processes: int | None = None
) -> dict[str, Any]:
    found = find(results, target, model, rows, processes)
    if found is None:
        raise LookupError(f"no result for {target} {model} x{rows} (processes {processes})")
    return found


def prediction_check(results: list[dict[str, Any]], processes: int) -> dict[str, float]:
    """Largest |Carrara - naive| over the predictions both made for the same rows."""
    check = {}
    for r in results:
        if r["target"] != "naive" or not r["outputs"]:
            continue
        ours = find(results, "carrara", r["model"], r["rows"], processes)
        if ours and ours["outputs"]:
            pairs = [
                abs(a - b)
                for xs, ys in zip(ours["outputs"], r["outputs"], strict=False)
                for a, b in zip(xs, ys, strict=True)
            ]
            check[f"{r['model']} x{r['rows']}"] = max(pairs)
    return check


def targets(results: list[dict[str, Any]], startup: dict[str, Any], cfg: Config) -> dict[str, bool]:
    echo = need(results, "echo", "eta", 1)
    checks = {}
    for p in cfg.processes:
        eta1 = need(results, "carrara", "eta", 1, p)
        naive1 = need(results, "naive", "eta", 1)
        checks[f"p{p}: ETA 1 row p50 within 0.4 ms of echo"] = (
            eta1["latency"].p50_ms - echo["latency"].p50_ms <= 0.4
        )
        checks[f"p{p}: ETA 1 row p99 <= 2x echo p99"] = (
            eta1["latency"].p99_ms <= 2 * echo["latency"].p99_ms
        )
        eta100 = find(results, "carrara", "eta", 100, p)
        if eta100 is not None:
            checks[f"p{p}: ETA 100 rows p50 <= 5 ms"] = eta100["latency"].p50_ms <= 5
        checks[f"p{p}: ETA 1 row calls/s >= 2.5x naive"] = (
            eta1["calls_per_s"] >= 2.5 * naive1["calls_per_s"]
        )
        checks[f"p{p}: SERVING with both models <= 3 s from start"] = (
            startup[f"carrara_p{p}"]["all_ready_s"] <= 3
        )
    return checks


# --- the concurrency study --------------------------------------------------------------------


def concurrency_study(
    cfg: Config, world: World, work: Path, pool: ClientPool
) -> list[dict[str, Any]]:
    """ETA 1 row over thread counts x processes, and the echo floor on the sync server vs
    grpc.aio; each at `clients` and at twice as many client processes."""
    inputs = tuple(request_pool(world, "eta", 1, cfg.pool))
    servers: list[tuple[dict[str, Any], Any]] = [
        ({"target": f"echo {mode}", "processes": 1, "threads": cfg.threads * (mode == "sync")},
         lambda mode=mode: echo_server(work, cfg.threads, mode))
        for mode in ("sync", "aio")
    ]  # fmt: skip
    servers += [
        ({"target": "carrara", "processes": p, "threads": t},
         lambda p=p, t=t: carrara_server(world, work, p, t))
        for p in cfg.processes
        for t in (1, 2, 4, 8)
    ]  # fmt: skip
    rows: list[dict[str, Any]] = []
    for labels, start in servers:
        with start() as svc:
            kind = "echo" if labels["target"].startswith("echo") else "carrara"
            job = Job(kind, "eta", inputs, target=svc.target)
            for clients in (cfg.clients, 2 * cfg.clients):
                rows.append(measure(pool, cfg, world, job, svc.pids(), clients, **labels))
                print(f"  {_target_name(rows[-1])} x{clients}: {_brief(rows[-1])}")
    return rows


# --- report -----------------------------------------------------------------------------------


def _target_name(r: dict[str, Any]) -> str:
    names = {"echo": "echo (floor)", "naive": "naive SDK+predict", "feast": "feast listen"}
    threads = f" t{r['threads']}" if r.get("threads") else ""
    if r["target"] == "carrara":
        return f"carrara p{r['processes']}{threads}"
    return f"{names.get(r['target'], r['target'])}{threads}{r.get('variant', '')}"


def report(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        lat, server = r["latency"], r["server_cpu_ms_per_call"]
        # fmt: off
        rows.append([
            _target_name(r), r["model"] if r["target"] != "echo" else "-", r["rows"],
            round(lat.p50_ms, 3), round(lat.p90_ms, 3), round(lat.p99_ms, 3), round(lat.max_ms, 3),
            r["clients"], round(r["calls_per_s"]), round(r["loaded_latency"].p99_ms, 2),
            "-" if server is None else round(server, 3), round(r["redis_cpu_ms_per_call"], 3),
            round(r["client_cpu_ms_per_call"], 3),
            f"{100 * r['machine_busy']:.0f}/{100 * r['ours_busy']:.0f}",
        ])
    headers = [
        "target",
        "model",
        "rows",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "clients",
        "calls/s",
        "loaded p99",
        "CPU ms/call: server",
        "redis",
        "clients",
        "busy %: all/ours",
    ]
    # fmt: on
    return table(rows, headers)


def ratios(results: list[dict[str, Any]]) -> str:
    echo = need(results, "echo", "eta", 1)
    rows = []
    for r in results:
        if r["target"] in ("echo", "naive"):
            continue
        naive = find(results, "naive", r["model"], r["rows"])
        lat = r["latency"]
        rows.append(
            [
                _target_name(r),
                r["model"],
                r["rows"],
                round(lat.p50_ms - echo["latency"].p50_ms, 3),
                round(lat.p99_ms / echo["latency"].p99_ms, 2),
                round(r["calls_per_s"] / echo["calls_per_s"], 2),
                round(naive["latency"].p50_ms / lat.p50_ms, 2) if naive else "-",
                round(r["calls_per_s"] / naive["calls_per_s"], 2) if naive else "-",
            ]
        )
    headers = [
        "target",
        "model",
        "rows",
        "p50 - echo ms",
        "p99 / echo",
        "calls/s / echo",
        "naive p50 / p50",
        "calls/s / naive",
    ]
    return table(rows, headers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "online.json")
    parser.add_argument("--workdir", type=Path, default=None, help="kept after the run if given")
    parser.add_argument(
        "--models",
        type=Path,
        default=None,
        help="copy this model registry instead of training (needs eta, pricing)",
    )
    parser.add_argument(
        "--processes",
        type=_counts,
        default=(1, 2),
        help="carrara serve --processes values, comma-separated (default: 1,2)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="carrara and echo server threads (default: 2)"
    )
    parser.add_argument("--clients", type=int, default=4, help="client processes (default: 4)")
    parser.add_argument(
        "--feature-cache",
        type=int,
        default=0,
        metavar="N",
        help="also: ETA 1 row over 100k Zipf-drawn drivers, cache off vs "
        "--feature-cache-entries N (benchmarks/online_cache.py)",
    )
    parser.add_argument(
        "--feature-cache-only",
        action="store_true",
        help="with --feature-cache: run that study alone (no other target)",
    )
    parser.add_argument(
        "--concurrency-study",
        action="store_true",
        help="also: threads 1/4/8 x processes, echo sync vs grpc.aio",
    )
    args = parser.parse_args(argv)
    cfg = config(args)
    # SIGTERM unwinds like Ctrl-C, so every process started so far is stopped by its pid
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="carrara-online-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {**stamp(), "small": cfg.small, "config": asdict(cfg)}
    out["load_average_at_start"] = os.getloadavg()
    try:
        with ExitStack() as stack:
            redis_port = stack.enter_context(redis_server(work))
            print(f"world ({cfg.world}) on redis-server :{redis_port}")
            world = prepare_world(cfg, work, redis_port, args.models)
            out["models"] = world.models
            pool = ClientPool(2 * cfg.clients if args.concurrency_study else cfg.clients)
            stack.callback(pool.close)
            results: list[dict[str, Any]] = []
            out["startup"] = {}
            if not args.feature_cache_only:
                results, out["startup"] = run_benchmark(cfg, world, work, pool)
            if args.concurrency_study:
                out["concurrency_study"] = concurrency_study(cfg, world, work, pool)
            if args.feature_cache:
                from benchmarks.online_cache import cache_study

                out["feature_cache"] = cache_study(cfg, world, work, pool, args.feature_cache)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    out["prediction_check_max_abs_diff"] = prediction_check(results, cfg.processes[0])
    out["targets"] = targets(results, out["startup"], cfg) if results else {}
    out["started_pids"] = STARTED_PIDS
    out["left_running"] = [pid for pid in STARTED_PIDS if _running(pid)]
    out["results"] = [{k: v for k, v in r.items() if k != "outputs"} for r in results]
    for r in out.get("concurrency_study", []) + out.get("feature_cache", {}).get("results", []):
        r.pop("outputs", None)
    write_json(args.out, out)
    _print_summary(out, results, cfg)
    print(f"-> {args.out}")
    agree = all(d <= 1e-9 for d in out["prediction_check_max_abs_diff"].values())
    agree = agree and out.get("feature_cache", {}).get("identical_predictions", True)
    if out["left_running"]:
        print(f"processes still running: {out['left_running']}", file=sys.stderr)
    return 0 if agree and not out["left_running"] else 1


def _print_summary(out: dict[str, Any], results: list[dict[str, Any]], cfg: Config) -> None:
    print()
    for name, facts in out["models"].items():
        print(
            f"model {name}:{facts['version']}: {facts['trees']} trees, {facts['features']} features"
        )
    for name, s in out["startup"].items():
        print(
            f"{name}: process start -> SERVING {s['ready_s']:.2f} s"
            + (
                f" (all processes, models loaded: {s['all_ready_s']:.2f} s)"
                if "all_ready_s" in s
                else ""
            )
        )
    if results:  # not with --feature-cache-only
        print(f"predictions carrara vs naive, max |diff|: {out['prediction_check_max_abs_diff']}")
        print()
        print(report(results))
    if "concurrency_study" in out:
        print("\nconcurrency study (ETA 1 row; echo: the floor)")
        print(report(out["concurrency_study"]))
    if results:
        print()
        print(ratios(results))
        print()
    for check, ok in out["targets"].items():
        print(f"{'PASS' if ok else 'MISS'}  {check}")
    if "feature_cache" in out:
        from benchmarks.online_cache import cache_report

        print()
        print(cache_report(out["feature_cache"]))
    for r in results + out.get("concurrency_study", []):
        others = max(r["others_busy"], r["latency_others_busy"])
        if others > OTHERS_LIMIT:
            print(
                f"NOTE  {_target_name(r)} {r['model']} x{r['rows']}: other processes used "
                f"{100 * others:.0f}% of the machine while it was measured"
            )


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has stopped; its parent or init reaps it


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas: {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected numbers >= 1: {text!r}")
    return values


if __name__ == "__main__":
    sys.exit(main())
