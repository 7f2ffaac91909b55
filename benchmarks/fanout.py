"""Benchmark: the cost of a model's feature views, 1 to 20 of them, on Carrara's request path
and on Feast's own online read, in one run on one generated repository.

The run starts its own redis-server on a free loopback port and generates a Feast repository:
one entity (driver_id), VIEWS feature views of FEATURES Float64 features each (a Parquet file
per view, every driver fresh), and per view count k a feature service over the first k views
with a LightGBM model registered on it (`carrara models register`: random data, fixed seed).
`carrara apply` and `carrara materialize` fill Redis. Then, in this process, one call at a
time for a 1-row request:
  carrara  ServedModel.predict of the model over k views (what a Predict does after parsing:
           one pipelined Redis round trip, decode, score), with the feature cache off;
  predict  the same through `carrara serve` (a separate process): Predict over gRPC;
  feast    FeatureStore.get_online_features of the k-view feature service (Feast's read path;
           no scoring), unless --no-feast.
Each is printed with its cost relative to 1 view; the target is Carrara's Predict over 20
views at most 1.3x over 1 view.

    python -m benchmarks.fanout [--small] [--no-feast] [--out benchmarks/out/fanout.json]

Every process it starts (redis-server, the carrara commands) is stopped by its pid.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, latency, redis_server, run_child, stamp, table, timed_calls
from benchmarks.harness import write_json as write_result

BIN = Path(sys.executable).parent
VIEWS = (1, 5, 10, 20)
FEATURES = 5  # per view
SEED = 20261202
PROJECT = "fanout"

YAML = """project: fanout
registry: data/registry.db
provider: local
online_store:
    type: redis
    connection_string: "127.0.0.1:{port}"
offline_store:
    type: file
entity_key_serialization_version: 3
auth:
    type: no_auth
"""


def write_repo(repo: Path, port: int, views: int, drivers: int, end: datetime) -> None:
    """The generated repository: `views` views over driver_id, services over the first k."""
    import numpy as np
    import pandas as pd

    (repo / "data").mkdir(parents=True)
    (repo / "feature_store.yaml").write_text(YAML.format(port=port))
    (repo / ".feastignore").write_text("data/\n")
    rng = np.random.default_rng(SEED)
    lines = [
        "from datetime import timedelta",
        "from feast import Entity, FeatureService, FeatureView, Field, FileSource",
        "from feast.types import Float64, Int64",
        "from feast.value_type import ValueType",
        'driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)',
    ]
    for v in range(views):
        frame = pd.DataFrame(
            {
                "driver_id": np.arange(drivers, dtype=np.int64),
                "event_timestamp": pd.Timestamp(end - timedelta(minutes=1)),
                **{f"f{j}": rng.random(drivers) for j in range(FEATURES)},
            }
        )
        frame.to_parquet(repo / "data" / f"fv{v}.parquet")
        fields = ", ".join(f'Field(name="f{j}", dtype=Float64)' for j in range(FEATURES))
        lines.append(
            f'fv{v} = FeatureView(name="fv{v}", entities=[driver], ttl=timedelta(days=1), '
            f'schema=[Field(name="driver_id", dtype=Int64), {fields}], '
            f'source=FileSource(name="fv{v}_source", path="data/fv{v}.parquet", '
            f'timestamp_field="event_timestamp"))'
        )
    for k in VIEWS:
        if k <= views:
            members = ", ".join(f"fv{v}" for v in range(k))
            lines.append(f'fanout_{k} = FeatureService(name="fanout_{k}", features=[{members}])')
    (repo / "definitions.py").write_text("\n".join(lines) + "\n")


def register_models(repo: Path, registry: Path, counts: list[int]) -> None:
    """A small LightGBM model per view count, on the k-view service's features (random)."""
    import lightgbm as lgb
    import numpy as np

    rng = np.random.default_rng(SEED)
    for k in counts:
        names = [f"fv{v}__f{j}" for v in range(k) for j in range(FEATURES)]
        x = rng.random((2_000, len(names)))
        y = x @ rng.random(len(names)) + rng.normal(0, 0.1, len(x))
        data = lgb.Dataset(x, y, feature_name=names)
        params = {"objective": "regression", "num_leaves": 15, "verbose": -1, "seed": SEED}
        booster = lgb.train(params, data, num_boost_round=50)
        path = registry.parent / f"fanout_{k}.txt"
        booster.save_model(str(path))
        _carrara(
            *("models", "register", f"fanout_{k}", "--model-file", str(path)),
            *("--feature-service", f"fanout_{k}", "--repo", str(repo)),
            *("--registry", str(registry)),
        )


@contextmanager
def server(repo: Path, registry: Path, work: Path) -> Iterator[str]:
    """`carrara serve` over the repo, until the block ends (stopped by its pid)."""
    from benchmarks.online import carrara_serve

    with carrara_serve(repo, registry, work) as svc:
        yield svc.target


def _carrara(*args: str) -> None:
    run = run_child([str(BIN / "carrara"), *args], cwd=ROOT, timeout_s=900)
    if run.returncode:
        raise RuntimeError(f"carrara {' '.join(args[:2])} failed:\n{run.stderr[-3000:]}")


def carrara_calls(repo: Path, registry: Path, counts: list[int], drivers: int) -> dict[int, Any]:
    """Per view count, a 1-row ServedModel.predict call (a driver in turn)."""
    from serving.inference.served_model import NoObserver, build_served_model
    from serving.models.registry import ModelRegistry
    from serving.repo.plan import RepoFiles, load_plan
    from serving.store.online_store import OnlineStore
    from serving.store.settings import redis_settings

    plan = load_plan(RepoFiles.locate(repo))
    store = OnlineStore(redis_settings(repo, None), plan.project)
    models = ModelRegistry(registry)
    calls = {}
    for k in counts:
        served = build_served_model(
            models.load(f"fanout_{k}", plan), plan, repo, store, NoObserver()
        )
        calls[k] = _cycling(partial(_predict_in_process, served), drivers)
    return calls


def predict_calls(target: str, counts: list[int], drivers: int) -> dict[int, Any]:
    """Per view count, a 1-row Predict over gRPC to the server at `target`."""
    import grpc

    from serving.client import to_values
    from serving.pb.carrara.v1 import prediction_pb2 as pb
    from serving.pb.carrara.v1 import prediction_pb2_grpc as pb_grpc

    stub = pb_grpc.PredictionServiceStub(grpc.insecure_channel(target))
    calls = {}
    for k in counts:
        requests = [
            pb.PredictRequest(model=f"fanout_{k}", entities={"driver_id": to_values([i])})
            for i in range(drivers)
        ]
        calls[k] = _cycling(partial(_predict_rpc, stub, requests), drivers)
    return calls


def feast_calls(repo: Path, counts: list[int], drivers: int) -> dict[int, Any]:
    """Per view count, Feast's get_online_features of the k-view service for 1 row."""
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    calls = {}
    for k in counts:
        service = store.get_feature_service(f"fanout_{k}")
        calls[k] = _cycling(partial(_feast_read, store, service), drivers)
    return calls


def _predict_in_process(served: Any, driver: int) -> Any:
    return served.predict({"driver_id": [driver]}, {}, 1, 1.0)


def _predict_rpc(stub: Any, requests: list[Any], driver: int) -> Any:
    return stub.Predict(requests[driver], timeout=10)


def _feast_read(store: Any, service: Any, driver: int) -> Any:
    rows = [{"driver_id": driver}]
    return store.get_online_features(
        features=service, entity_rows=rows, full_feature_names=True
    ).to_dict()


def _cycling(call: Callable[[int], Any], drivers: int) -> Callable[[], Any]:
    state = {"i": 0}

    def next_call() -> Any:
        state["i"] = (state["i"] + 7919) % drivers  # a prime stride: every driver in turn
        return call(state["i"])

    return next_call


def measure(calls: dict[int, Any], warmup: int, count: int, budget_s: float) -> dict[int, Any]:
    results = {}
    for k, call in calls.items():
        for _ in range(warmup):
            call()
        results[k] = latency(timed_calls(call, count, budget_s))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--no-feast", action="store_true", help="leave out Feast's read path")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "fanout.json")
    args = parser.parse_args(argv)
    counts = [1, 5] if args.small else list(VIEWS)
    drivers = 200 if args.small else 10_000
    warmup, count, budget_s = (20, 100, 1.0) if args.small else (300, 5_000, 8.0)
    work = Path(tempfile.mkdtemp(prefix="carrara-fanout-"))
    out: dict[str, Any] = {**stamp(), "small": args.small, "features_per_view": FEATURES}
    try:
        with redis_server(work) as port:
            repo, registry = work / "repo", work / "models"
            end = datetime.now(UTC)
            write_repo(repo, port, max(counts), drivers, end)
            _carrara("apply", "--repo", str(repo))
            window = ["--start", (end - timedelta(days=1)).isoformat(), "--end", end.isoformat()]
            _carrara("materialize", "--repo", str(repo), *window)
            register_models(repo, registry, counts)
            print(f"repo: {max(counts)} views x {FEATURES} features, {drivers:,} drivers")
            results = {
                "carrara": measure(
                    carrara_calls(repo, registry, counts, drivers), warmup, count, budget_s
                )
            }
            with server(repo, registry, work) as target:
                calls = predict_calls(target, counts, drivers)
                results["predict"] = measure(calls, warmup, count, budget_s)
            if not args.no_feast:
                results["feast"] = measure(
                    feast_calls(repo, counts, drivers), warmup, count, budget_s
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["results"] = {name: {str(k): v for k, v in r.items()} for name, r in results.items()}
    rows, ratios = [], {}
    for name, by_count in results.items():
        base = by_count[counts[0]].p50_ms
        for k, lat in by_count.items():
            ratios[f"{name} {k}"] = lat.p50_ms / base
            rows.append(
                [
                    name,
                    k,
                    k * FEATURES,
                    round(lat.p50_ms, 3),
                    round(lat.p99_ms, 3),
                    round(lat.p50_ms / base, 2),
                ]
            )
    out["ratio_to_one_view"] = ratios
    last = counts[-1]
    out["targets"] = {f"predict: {last} views p50 <= 1.3x 1 view": ratios[f"predict {last}"] <= 1.3}
    write_result(args.out, out)
    print(table(rows, ["path", "views", "features", "p50 ms", "p99 ms", "p50 / 1 view"]))
    for check, ok in out["targets"].items():
        print(f"{'PASS' if ok else 'MISS'}  {check}")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
