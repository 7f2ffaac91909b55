"""Benchmark: Carrara's `GetOnlineFeatures` against Feast's own `get_online_features` (in
process) and `feast serve` (HTTP), on the first repository a Feast user makes, in one run.

The world is Feast's: `feast init`'s template in a temporary folder, its online store pointed
at a private redis-server on a free loopback port, `apply_repo` (Feast apply + serving plan),
then the template's data materialized. The request: feature service `driver_activity_v1`
(the stored conv_rate and the pandas on-demand view `transformed_conv_rate`, which takes the
request fields val_to_add and val_to_add_2), 1 row: driver 1001, 1000, 2000.
  carrara           `carrara serve` as its own process (no models: an empty registry), called
                    over gRPC with `PredictionClient.online_features` from this process;
  feast_in_process  `FeatureStore.get_online_features(<the feature service>, entity_rows)`
                    and `.to_dict()` in this process (the service resolved once, up front);
  feast_serve       `feast serve` (gunicorn + uvicorn, 1 worker, no access log, no worker
                    recycling) as its own process, POST /get-online-features over one
                    keep-alive HTTP connection (http.client, the body encoded once);
  on_demand_alone   for the record, not a peer: the on-demand view alone, in this process, as
                    Carrara's server runs it (its input DataFrame, then the repo's function),
                    on the stored features Carrara returns for the row: the part of
                    Carrara's time that is the user's pandas code.
Every variant runs with full feature names. Calls are one at a time, in rounds: each round
measures every variant in turn (the order rotating), so drift on a shared machine hits all
alike; p50/p90/p99/max per variant. Before timing, Carrara's values must equal Feast's for the
row (and `feast serve`'s too). Printed last: Carrara's p50 against each Feast variant's, with
the targets of issue #14 (<= 1/3 of in-process, <= 1/5 of `feast serve`).

    python -m benchmarks.feast_online [--small] [--out benchmarks/out/feast_online.json]

Every process it starts (redis-server, the two servers) is stopped by its pid, also on failure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, latency, redis_server, stamp, stop_tree, table, write_json

SERVICE = "driver_activity_v1"
ENTITIES = {"driver_id": [1001]}
REQUEST_DATA = {"val_to_add": [1000], "val_to_add_2": [2000]}
ON_DEMAND_VIEW = "transformed_conv_rate"  # the service's pandas-mode view
TARGETS = {"feast_in_process": 1 / 3, "feast_serve": 1 / 5}  # Carrara's p50 at most this
CARRARA_READY = re.compile(r" on 127\.0\.0\.1:(\d+) \(ready in")
FEAST_LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
START_TIMEOUT_S = 120  # a server's start-up: `import feast` alone takes 4-10 s here


@dataclass(frozen=True)
class Sizes:
    rounds: int
    calls_per_round: int  # per variant
    warmup: int  # per variant, untimed


FULL = Sizes(rounds=10, calls_per_round=200, warmup=100)
SMALL = Sizes(rounds=2, calls_per_round=5, warmup=3)


# --- the template world -------------------------------------------------------------------


def template_repo(work: Path, redis_port: int) -> Path:
    """`feast init starter` in `work`, its online store rewritten to the private Redis."""
    subprocess.run(
        [sys.executable, "-m", "feast.cli.cli", "init", "starter"],
        cwd=work,
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    repo = work / "starter" / "feature_repo"
    config = (repo / "feature_store.yaml").read_text()
    redis_store = (
        f'online_store:\n    type: redis\n    connection_string: "127.0.0.1:{redis_port}"\n'
    )
    config, replaced = re.subn(r"online_store:\n(?:    .*\n)+", redis_store, config)
    if replaced != 1:
        raise RuntimeError(f"no online_store section in {repo / 'feature_store.yaml'}")
    (repo / "feature_store.yaml").write_text(config)
    return repo


def apply_and_materialize(repo: Path) -> None:
    """The serving plan, then the template's data (its last 15 days, hourly) into Redis."""
    from serving.batch.materialize import materialize
    from serving.repo.compile import apply_repo

    apply_repo(repo)
    end = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    materialize(repo, end - timedelta(days=60), end)


# --- servers ------------------------------------------------------------------------------


@contextmanager
def _server(
    name: str, args: list[str], cwd: Path, log: Path, ready: re.Pattern[str]
) -> Iterator[int]:
    """A server process whose log names its port once it listens; yields the port, stops it
    (and its children: gunicorn's worker) by pid."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while (found := ready.search(log.read_text())) is None:  # bounded by the deadline
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start ({log}):\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        yield int(found.group(1))
    finally:
        stop_tree(process)


def carrara_server(repo: Path, redis_url: str, work: Path) -> Any:
    registry = work / "models"  # no models: GetOnlineFeatures needs none
    registry.mkdir(exist_ok=True)
    args = [sys.executable, "-m", "serving.cli", "serve", "--repo", str(repo)]
    args += ["--registry", str(registry), "--redis-url", redis_url, "--port", "0"]
    return _server("carrara serve", args, ROOT, work / "carrara-serve.log", CARRARA_READY)


@contextmanager
def feast_server(repo: Path, work: Path) -> Iterator[int]:
    """`feast serve` on a port of its choosing (gunicorn logs the one it bound), once its
    worker answers /health. Worker recycling (--max-requests, 1,000 by default) is off: it
    would restart the worker mid-run."""
    args = [sys.executable, "-m", "feast.cli.cli", "serve", "-h", "127.0.0.1", "-p", "0"]
    args += ["-w", "1", "--no-access-log", "--max-requests", "0"]
    with _server("feast serve", args, repo, work / "feast-serve.log", FEAST_LISTENING) as port:
        _wait_healthy(port)
        yield port


def _wait_healthy(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:  # bounded by the deadline
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass  # not accepting yet: the master listens before its worker has booted
        finally:
            connection.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"feast serve on port {port}: /health not OK in {START_TIMEOUT_S} s")
        time.sleep(0.05)


# --- callers: each returns {feature name: [value]}, full feature names --------------------


def carrara_caller(client: Any) -> Callable[[], dict[str, list[Any]]]:
    from serving.client import python_values

    def call() -> dict[str, list[Any]]:
        response = client.online_features(
            ENTITIES, feature_service=SERVICE, request_data=REQUEST_DATA
        )
        return {c.name: python_values(c) for c in response.features}

    return call


def feast_in_process_caller(repo: Path) -> Callable[[], dict[str, list[Any]]]:
    from serving.repo.compile import feast_context

    with feast_context(repo):
        from feast import FeatureStore

        store = FeatureStore(repo_path=str(repo))
        service = store.get_feature_service(SERVICE)
    row = {**{k: v[0] for k, v in ENTITIES.items()}, **{k: v[0] for k, v in REQUEST_DATA.items()}}

    def call() -> dict[str, list[Any]]:
        response = store.get_online_features(
            features=service, entity_rows=[row], full_feature_names=True
        )
        found = dict(response.to_dict())
        return {k: v for k, v in found.items() if k not in row}

    return call


def feast_serve_caller(port: int, stack: ExitStack) -> Callable[[], dict[str, list[Any]]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    stack.callback(connection.close)
    body = json.dumps(
        {
            "feature_service": SERVICE,
            "entities": {**ENTITIES, **REQUEST_DATA},
            "full_feature_names": True,
        }
    ).encode()
    headers = {"Content-Type": "application/json"}

    def call() -> dict[str, list[Any]]:
        connection.request("POST", "/get-online-features", body, headers)
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"feast serve answered {response.status}: {payload[:500]!r}")
        reply = json.loads(payload)
        names = reply["metadata"]["feature_names"]
        return {
            name: _present(r)
            for name, r in zip(names, reply["results"], strict=True)
            if name not in ENTITIES and name not in REQUEST_DATA
        }

    return call


def _present(result: dict[str, list[Any]]) -> list[Any]:
    """A `feast serve` result's values, None where not PRESENT (as `to_dict()` gives them)."""
    return [
        v if status == "PRESENT" else None
        for v, status in zip(result["values"], result["statuses"], strict=True)
    ]


def on_demand_alone_caller(repo: Path, client: Any) -> Callable[[], object]:
    """The view's compute on the stored features it reads (all of its sources' features,
    asked of Carrara once)."""
    from serving.client import python_values
    from serving.inference.on_demand_steps import load_view, view_inputs
    from serving.repo.plan import RepoFiles, load_plan

    view = load_view(load_plan(RepoFiles.locate(repo)), ON_DEMAND_VIEW, repo)
    refs = [f"{s.name}:{feature}" for s in view.plan.sources for feature in s.features]
    response = client.online_features(ENTITIES, features=refs)
    stored = {c.name: python_values(c) for c in response.features}
    inputs = view_inputs(view.plan, ENTITIES, REQUEST_DATA, stored)
    return lambda: view.compute(inputs, 1)


# --- the run ------------------------------------------------------------------------------


def measure_variants(
    callers: dict[str, Callable[[], object]], sizes: Sizes
) -> dict[str, dict[str, Any]]:
    samples: dict[str, list[int]] = {name: [] for name in callers}
    for call in callers.values():
        for _ in range(sizes.warmup):
            call()
    order = list(callers.items())
    for round_ in range(sizes.rounds):
        shift = round_ % len(order)
        for name, call in order[shift:] + order[:shift]:
            for _ in range(sizes.calls_per_round):
                started = time.perf_counter_ns()
                call()
                samples[name].append(time.perf_counter_ns() - started)
    return {name: asdict(latency(samples[name])) for name in callers}


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    ours = results["carrara"]
    found = {}
    for peer, target in TARGETS.items():
        p50 = ours["p50_ms"] / results[peer]["p50_ms"]
        found[f"carrara/{peer}"] = {
            "p50": p50,
            "p99": ours["p99_ms"] / results[peer]["p99_ms"],
            "target_p50": target,
            "met": p50 <= target,
        }
    return found


def run(sizes: Sizes, work: Path) -> dict[str, Any]:
    from serving.client import PredictionClient

    out: dict[str, Any] = {}
    with ExitStack() as stack:
        redis_port = stack.enter_context(redis_server(work))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        print(f"feast init's template on redis-server :{redis_port}", flush=True)
        repo = template_repo(work, redis_port)
        apply_and_materialize(repo)
        carrara_port = stack.enter_context(carrara_server(repo, redis_url, work))
        feast_port = stack.enter_context(feast_server(repo, work))
        client = stack.enter_context(PredictionClient(f"127.0.0.1:{carrara_port}", timeout_s=30))
        peers = {
            "carrara": carrara_caller(client),
            "feast_in_process": feast_in_process_caller(repo),
            "feast_serve": feast_serve_caller(feast_port, stack),
        }
        answers = {name: call() for name, call in peers.items()}
        out["values"] = answers["carrara"]
        callers: dict[str, Callable[[], object]] = {**peers}
        callers["on_demand_alone"] = on_demand_alone_caller(repo, client)
        out["same_values"] = answers["carrara"] == answers["feast_in_process"]
        out["feast_serve_same_values"] = answers["feast_serve"] == answers["feast_in_process"]
        out["load_average_before"] = os.getloadavg()
        out["results"] = measure_variants(callers, sizes)
        out["load_average_after"] = os.getloadavg()
    out["ratios"] = ratios(out["results"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "out" / "feast_online.json"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="kept after the run if given")
    args = parser.parse_args(argv)
    sizes = SMALL if args.small else FULL
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))  # unwind: stop by pid
    # Printed by Feast on every on-demand view use; says nothing about the measurement.
    warnings.filterwarnings("ignore", "On demand feature view is an experimental")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="carrara-feast-online-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {**stamp(), "small": args.small, "sizes": asdict(sizes)}
    out["request"] = {"feature_service": SERVICE, **ENTITIES, **REQUEST_DATA}
    try:
        out.update(run(sizes, work))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    write_json(args.out, out)
    print_summary(out)
    print(f"-> {args.out}")
    return 0 if out["same_values"] else 1


def print_summary(out: dict[str, Any]) -> None:
    rows = [
        [name, r["count"], r["p50_ms"], r["p90_ms"], r["p99_ms"], r["max_ms"]]
        for name, r in out["results"].items()
    ]
    print()
    print(f"GetOnlineFeatures {SERVICE}, 1 row (driver 1001, val_to_add 1000, val_to_add_2 2000)")
    print(table(rows, ["variant", "calls", "p50 ms", "p90 ms", "p99 ms", "max ms"]))
    print("on_demand_alone: the pandas view as Carrara runs it, in process (in carrara's time)")
    print(
        f"same values as Feast in process: carrara {out['same_values']}, "
        f"feast serve {out['feast_serve_same_values']}"
    )
    load = ", ".join(f"{a:.1f}" for a in out["load_average_after"])
    print(f"load average after the measurement (1, 5, 15 min): {load}")
    print()
    for name, r in out["ratios"].items():
        verdict = "met" if r["met"] else "not met"
        print(
            f"p50 {name}: {r['p50']:.3f} (target <= {r['target_p50']:.3f}: {verdict}); "
            f"p99 {r['p99']:.3f}"
        )


if __name__ == "__main__":
    sys.exit(main())
