"""Benchmark: what the prediction log costs a served ETA call, log off vs on, in one run.

On the private world of benchmarks/online.py (its redis-server, sample world, models and
client processes), `carrara serve` runs twice: without a log, then with
`--prediction-log DIR --log-sample-rate 1` (every call logged; the drift window on, as the
command turns it on with a log). Each gets the harness's latency phase (ETA, 1 row, one call
at a time: p50/p99) and throughput phase (--clients processes in closed loops: calls/s).
After the logging server stops, the log is read back: every call it answered must be there,
less the rows it counted as dropped.

Then drift: a third server (log on, its drift window DRIFT_WINDOW_ROWS) gets ETA traffic at
DRIFT_RATE calls/s from this process, first as drawn from the world (the PSI of every
feature is recorded), then with a planted shift (every dropoff moved ~33 km north, so the
trip's haversine distance shifts); the time from the first shifted call until
`carrara_feature_psi` of trip_geometry__haversine_km reaches the alert level is measured.

    python -m benchmarks.prediction_log [--small] [--models DIR] [--clients 4]
                                        [--out benchmarks/out/prediction_log.json]

Targets (issue 17): with the log at 100 %, ETA 1-row p50 at most +0.05 ms and calls/s at
least 90 % of logging off; a planted drift flagged by the served PSI within 5 minutes of
traffic at 200 calls/s. The ratios are printed last.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, redis_server, stamp, write_json
from benchmarks.online import (
    BIN,
    STARTED_PIDS,
    ClientPool,
    Job,
    World,
    config,
    measure,
    prepare_world,
    request_pool,
    service,
)
from serving.ports import free_port

P50_BUDGET_MS = 0.05
CALLS_SHARE = 0.9
DRIFT_RATE = 200  # calls/s
DRIFT_WINDOW_ROWS = 10_000  # the command's default with a log
DRIFT_LIMIT_S = 300.0
PLANTED = "trip_geometry__haversine_km"
ALERT_PSI = 0.2


def requests_served(metrics_port: int) -> float:
    """Predict calls answered OK, from the server's own counter."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as page:
        text = page.read().decode()
    found = re.findall(
        r'^carrara_requests_total\{code="OK",method="Predict",model="eta"\} ([0-9.e+]+)$',
        text,
        re.M,
    )
    dropped = re.findall(r"^carrara_prediction_log_dropped_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    return sum(map(float, found)) - sum(map(float, dropped))


def logged_rows(root: Path, role: str | None = None) -> int:
    import pyarrow.dataset as ds

    dataset = ds.dataset(root, format="parquet", partitioning="hive")
    return int(dataset.count_rows(filter=None if role is None else ds.field("role") == role))


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = config(args)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="carrara-log-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {**stamp(), "small": cfg.small, "config": asdict(cfg)}
    log_dir = work / "prediction-log"
    try:
        with ExitStack() as stack:
            redis_port = stack.enter_context(redis_server(work))
            world = prepare_world(cfg, work, redis_port, args.models)
            pool = ClientPool(cfg.clients)
            stack.callback(pool.close)
            inputs = tuple(request_pool(world, "eta", 1, cfg.pool))
            rows: list[dict[str, Any]] = []
            metrics_port = free_port()
            with ExitStack() as servers:
                flags = ("--metrics-port", str(metrics_port), "--threads", str(cfg.threads))
                off = servers.enter_context(serve(world, work / "serve-off.log", flags[2:]))
                on = servers.enter_context(
                    serve(
                        world,
                        work / "serve-log.log",
                        ("--prediction-log", str(log_dir), "--log-sample-rate", "1", *flags),
                    )
                )
                # ABBA (AB with --small): a slow drift of the shared machine's load hits both
                order = (off, on) if cfg.small else (off, on, on, off)
                for svc in order:
                    label = "off" if svc is off else "log 100%"
                    job = Job("carrara", "eta", inputs, target=svc.target)
                    rows.append(
                        measure(pool, cfg, world, job, svc.pids(), target="carrara", log=label)
                    )
                    print(f"  {label:<9} {brief(rows[-1])}")
                shadowed = servers.enter_context(
                    serve(
                        replace(world, registry=shadow_registry(world.registry, work)),
                        work / "serve-shadow.log",
                        ("--prediction-log", str(work / "shadow-log"), *flags[2:]),
                    )
                )
                # the shadow's cost to the primary: against logging alone, ABBA again
                order = (on, shadowed) if cfg.small else (shadowed, on, on, shadowed)
                for svc in order:
                    label = SHADOW if svc is shadowed else LOG_AGAIN
                    job = Job("carrara", "eta", inputs, target=svc.target)
                    rows.append(
                        measure(pool, cfg, world, job, svc.pids(), target="carrara", log=label)
                    )
                    print(f"  {label:<9} {brief(rows[-1])}")
                served = requests_served(metrics_port)  # `on` served both phases
            out["logged_rows"] = logged_rows(log_dir)  # the server stopped: its files closed
            out["shadow_logged_rows"] = logged_rows(work / "shadow-log", role="shadow")
            out["served_less_dropped"] = served
            out["drift"] = drift_phase(cfg.small, world, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    out["results"] = [{k: v for k, v in r.items() if k != "outputs"} for r in rows]
    out["ratios"] = ratios(rows)
    out["started_pids"] = list(STARTED_PIDS)
    return out


SHADOW = "log + shadow 100%"
LOG_AGAIN = "log 100% (b)"
SHADOW_BUDGET_MS = 0.1  # issue #17: a shadow at 100% adds at most this to the primary's p50


def shadow_registry(registry: Path, work: Path) -> Path:
    """A copy of the registry whose eta has a second version (its first's model again) as
    its shadow, scored on every logged call."""
    from serving.models.registry import ModelRegistry

    copy = Path(shutil.copytree(registry, work / "shadow-models"))
    models = ModelRegistry(copy)
    version = sorted(models.versions("eta"))[-1]
    text = (copy / "eta" / str(version) / "model.txt").read_text()
    added = models.register(text, models.card(f"eta:{version}"))
    models.promote("eta", added.version, "shadow")
    return copy


def serve(world: World, log: Path, flags: tuple[str, ...]) -> Any:
    """`carrara serve` over the world with `flags`, in its own process tree (benchmarks/
    online.py's `service`: health SERVING awaited, stopped by pid)."""

    def command(port: int) -> list[str]:
        return [
            *(str(BIN / "carrara"), "serve", "--repo", str(world.repo)),
            *("--registry", str(world.registry), "--redis-url", world.redis_url),
            *("--port", str(port), *flags),
        ]

    return service("carrara", command, "carrara.v1.PredictionService", log, cwd=ROOT)


def psi_gauges(metrics_port: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as page:
        text = page.read().decode()
    psi = {}
    for labels, value in re.findall(r"^carrara_feature_psi\{([^}]*)\} (\S+)$", text, re.M):
        named = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if named.get("model") == "eta":
            psi[named["feature"]] = float(value)
    return psi


def drift_phase(small: bool, world: World, work: Path) -> dict[str, Any]:
    """Seconds of shifted traffic at DRIFT_RATE until the planted feature's PSI alerts.

    The traffic is a window's worth of distinct requests: a small pool cycled would be a
    lumpy sample, whose PSI is high without any shift (64 points over 10 bins: ~0.15)."""
    import grpc

    from benchmarks.online import predict_request
    from serving.pb.carrara.v1 import prediction_pb2_grpc as pb_grpc

    window = 200 if small else DRIFT_WINDOW_ROWS
    inputs = request_pool(world, "eta", 1, window)
    metrics_port = free_port()
    flags = ("--prediction-log", str(work / "drift-log"), "--drift-window", str(window))
    shifted = [
        (entities, {**data, "dropoff_lat": [v + 0.3 for v in data["dropoff_lat"]]})
        for entities, data in inputs
    ]
    result: dict[str, Any] = {"rate": DRIFT_RATE, "window_rows": window}
    with (
        serve(
            world, work / "serve-drift.log", (*flags, "--metrics-port", str(metrics_port))
        ) as svc,
        grpc.insecure_channel(svc.target) as channel,
    ):
        stub = pb_grpc.PredictionServiceStub(channel)
        plain = [predict_request("eta", i) for i in inputs]
        planted = [predict_request("eta", i) for i in shifted]
        paced(stub, plain, window / DRIFT_RATE + 2)  # a full window of unshifted traffic
        result["psi_before"] = psi_gauges(metrics_port)
        result["planted_psi_before"] = result["psi_before"].get(PLANTED)
        started = time.monotonic()
        while time.monotonic() - started < (30.0 if small else DRIFT_LIMIT_S):
            paced(stub, planted, 1.0)
            if psi_gauges(metrics_port).get(PLANTED, 0.0) >= ALERT_PSI:
                result["flagged_after_s"] = time.monotonic() - started
                break
        result["psi_after"] = psi_gauges(metrics_port)
    return result


def paced(stub: Any, requests: list[Any], seconds: float) -> None:
    """Calls at DRIFT_RATE per second for `seconds`, cycling through `requests`."""
    started = time.monotonic()
    for i in range(int(seconds * DRIFT_RATE)):
        delay = started + i / DRIFT_RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        stub.Predict(requests[i % len(requests)], timeout=5)


def brief(r: dict[str, Any]) -> str:
    lat = r["latency"]
    return f"p50 {lat.p50_ms:.3f} ms, p99 {lat.p99_ms:.3f} ms, {r['calls_per_s']:,.0f} calls/s"


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Log on vs off, each the mean of its runs."""

    def mean(label: str, value: Callable[[dict[str, Any]], float]) -> float:
        values = [value(r) for r in rows if r["log"] == label]
        return sum(values) / len(values)

    def delta(value: Callable[[dict[str, Any]], float]) -> float:
        return mean("log 100%", value) - mean("off", value)

    return {
        "shadow_p50_delta_ms": mean(SHADOW, lambda r: r["latency"].p50_ms)
        - mean(LOG_AGAIN, lambda r: r["latency"].p50_ms),
        "p50_delta_ms": delta(lambda r: r["latency"].p50_ms),
        "p99_delta_ms": delta(lambda r: r["latency"].p99_ms),
        "calls_per_s_share": mean("log 100%", lambda r: r["calls_per_s"])
        / mean("off", lambda r: r["calls_per_s"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "out" / "prediction_log.json"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="kept after the run if given")
    parser.add_argument("--models", type=Path, default=None, help="copy this model registry")
    parser.add_argument("--threads", type=int, default=2, help="server threads (default: 2)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (default: 4)")
    args = parser.parse_args(argv)
    args.processes = (1,)
    # SIGTERM unwinds like Ctrl-C, so every process started is stopped by its pid
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    out = run(args)
    write_json(args.out, out)
    r, drift = out["ratios"], out["drift"]
    before = {f: v for f, v in drift["psi_before"].items() if v >= ALERT_PSI}
    print(
        f"drift at {DRIFT_RATE} calls/s, window {drift['window_rows']:,} rows: {PLANTED} PSI "
        f"{drift['planted_psi_before'] or 0:.3f} before the shift, alerted after "
        f"{drift.get('flagged_after_s', float('nan')):.1f} s of shifted traffic; features "
        f"alerting before the shift (traffic as drawn from the world): {before or 'none'}"
    )
    print(
        f"logged rows {out['logged_rows']:,} (calls answered less dropped rows: "
        f"{out['served_less_dropped']:,.0f})"
    )
    print(f"-> {args.out}")
    print(
        f"log 100% vs off: p50 {r['p50_delta_ms']:+.3f} ms, p99 {r['p99_delta_ms']:+.3f} ms, "
        f"calls/s {r['calls_per_s_share']:.1%}; shadow at 100%: p50 "
        f"{r['shadow_p50_delta_ms']:+.3f} ms ({out['shadow_logged_rows']:,} rows logged)"
    )
    checks = {
        f"log at 100%: ETA 1-row p50 <= off + {P50_BUDGET_MS} ms": r["p50_delta_ms"]
        <= P50_BUDGET_MS,
        f"log at 100%: calls/s >= {CALLS_SHARE:.0%} of off": r["calls_per_s_share"] >= CALLS_SHARE,
        f"shadow at 100%: primary p50 <= log alone + {SHADOW_BUDGET_MS} ms": r[
            "shadow_p50_delta_ms"
        ]
        <= SHADOW_BUDGET_MS,
        f"planted drift flagged within {DRIFT_LIMIT_S:.0f} s at {DRIFT_RATE} calls/s (and not "
        "before the shift)": drift.get("flagged_after_s", DRIFT_LIMIT_S + 1) <= DRIFT_LIMIT_S
        and (drift["planted_psi_before"] or 0.0) < ALERT_PSI,
    }
    for check, ok in checks.items():
        print(f"{'PASS' if ok else 'MISS'}  {check}")
    return 0 if out["logged_rows"] == round(out["served_less_dropped"]) else 1


if __name__ == "__main__":
    sys.exit(main())
