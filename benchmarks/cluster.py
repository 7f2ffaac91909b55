"""Benchmark: Carrara on a Redis Cluster (3 masters, 3 replicas) against one redis-server, in
one run on one private world, and a master's failover under load.

The run starts a private redis-server and a private local cluster on free loopback ports,
prepares the online benchmark's world on the single server (benchmarks/online.py
`prepare_world`: sample data with a fixed seed, `carrara apply`, `carrara train pricing` and
`eta` once or a copy of --models, materialized fresh), and materializes the same window of
the same world into the cluster from a copy of the repo configured the Feast way
(`redis_type: redis_cluster`, every node in `connection_string`). Then:

  predict      two `carrara serve` process trees (--processes 1 --threads 2), one per
               topology, the same registry; the client (this process) first sends every
               pooled request to both with `return_features` and checks that replies are
               identical, then times `Predict` one call at a time (warm-up, bounded by count
               and time) in rounds that alternate which topology goes first, to cancel drift;
  failover     while this process calls the cluster server in a loop (bounded by time), one
               master is killed (SIGKILL); a thread polls its replica's role and CLUSTER INFO
               meanwhile: how long calls failed, with which codes, and when they answered
               again, against when the cluster promoted the replica (no manual step is made);
               the killed node is then started again (it rejoins as a replica);
  materialize  `serving.batch.materialize.materialize()` in process, the same Parquet and
               window (benchmarks/materialize.py's generator: drivers x hourly snapshots +
               zones every 5 minutes) into each topology, emptied before each run, in the
               order single, cluster, cluster, single (...): entity rows/s, wall time, and
               the CPU seconds of this process and of the topology's redis-servers.

Targets (the issue's): ETA 1 row p50 on the cluster <= single + 0.15 ms; ETA 100 rows p50 <=
1.5x single; materialize into the cluster >= 80% of single's entity rows/s; after a master is
killed calls fail with UNAVAILABLE only and then succeed with no manual step.

    python -m benchmarks.cluster [--small] [--models DIR] [--out benchmarks/out/cluster.json]

Every process it starts (redis-servers, cluster nodes, the servers' trees) is stopped by its
pid on the way out, also on failure, Ctrl-C or SIGTERM; the JSON lists any left running.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from benchmarks import online
from benchmarks.harness import (
    ROOT,
    cpu_seconds,
    latency,
    per_second,
    stamp,
    stop_tree,
    table,
    timed_calls,
    write_json,
)
from benchmarks.materialize import END, Scenario, write_data
from serving.store.redis_process import LocalCluster, RedisProcess, private_cluster, private_redis

SINGLE, CLUSTER = "single", "cluster"
TOPOLOGIES = (SINGLE, CLUSTER)
SERVICE = "carrara.v1.PredictionService"
CALL_TIMEOUT_S = 5.0
FAILOVER_CALL_TIMEOUT_S = 2.0
POLL_S = 0.005  # the failover poller's period
MATERIALIZE_VIEWS = ("driver_stats", "zone_stats")
STARTED_PIDS: list[int] = []  # redis-servers and cluster nodes; servers are in online's list
TARGET_ETA1 = "ETA 1 row p50: cluster <= single + 0.15 ms"
TARGET_ETA100 = "ETA 100 rows p50: cluster <= 1.5x single"
TARGET_MATERIALIZE = "materialize: cluster >= 80% of single's entity rows/s"
TARGET_FAILOVER = "failover: only UNAVAILABLE, then answers with no manual step"


@dataclass(frozen=True)
class Config:
    small: bool
    world: dict[str, int]  # carrara sample-data sizes (benchmarks/online.py's)
    cases: tuple[tuple[str, int], ...]  # (model, rows)
    rounds: int  # predict rounds, alternating which topology goes first
    warmup: int  # untimed calls per case, topology and round
    calls: int  # timed calls at most, per case, topology and round
    budget_s: float  # ... and for at most this long
    pool: int  # distinct requests per case, cycled
    failover_s: float  # the failover loop's bound
    after_recovery_calls: int  # successes in a row after the outage that end the loop
    scenario: Scenario  # the materialize data
    materialize_runs: int  # per topology


def config(small: bool) -> Config:
    if small:
        return Config(
            small=True,
            world=online.SMALL_WORLD,
            cases=(("eta", 1), ("eta", 100)),
            rounds=2,
            warmup=5,
            calls=40,
            budget_s=0.3,
            pool=4,
            failover_s=30.0,
            after_recovery_calls=20,
            scenario=Scenario("small", 2_000, 3, 40, 3),
            materialize_runs=1,
        )
    return Config(
        small=False,
        world=online.FULL_WORLD,
        cases=(("eta", 1), ("eta", 10), ("eta", 100), ("pricing", 1)),
        rounds=24,
        warmup=5,
        calls=150,
        budget_s=0.3,
        pool=64,
        failover_s=30.0,
        after_recovery_calls=200,
        scenario=Scenario("drivers_200k", 200_000, 3, 1_000, 6),
        materialize_runs=2,
    )


# --- topologies -------------------------------------------------------------------------------


def cluster_repo(world_repo: Path, target: Path, cluster: LocalCluster) -> Path:
    """A copy of the world's repo whose online store is the cluster, as Feast configures one."""
    repo = Path(shutil.copytree(world_repo, target, ignore=shutil.ignore_patterns("*.parquet")))
    for parquet in (world_repo / "data").glob("*.parquet"):
        (repo / "data" / parquet.name).hardlink_to(parquet)
    cluster.configure_repo(repo)
    return repo


def flush(single: RedisProcess, cluster: LocalCluster, topology: str | None = None) -> None:
    """Empty one topology (or both)."""
    ports = [single.port] if topology in (None, SINGLE) else []
    ports += [n.port for n in cluster.masters()] if topology in (None, CLUSTER) else []
    for port in ports:
        client = redis.Redis(port=port)
        client.flushall()
        client.close()


def key_counts(single: RedisProcess, cluster: LocalCluster) -> dict[str, int]:
    def size(port: int) -> int:
        client = redis.Redis(port=port)
        try:
            return int(client.dbsize())  # type: ignore[arg-type]
        finally:
            client.close()

    return {SINGLE: size(single.port), CLUSTER: sum(size(n.port) for n in cluster.masters())}


@contextmanager
def server(
    name: str, repo: Path, registry: Path, work: Path, redis_url: str | None
) -> Iterator[Any]:
    """`carrara serve --processes 1 --threads 2` on a free port (online.service: health
    SERVING, stopped by pid); Redis from --redis-url, else from the repo's yaml."""

    def command(port: int) -> list[str]:
        url = ["--redis-url", redis_url] if redis_url else []
        return [
            str(online.BIN / "carrara"),
            *("serve", "--repo", str(repo), "--registry", str(registry), *url),
            *("--port", str(port), "--processes", "1", "--threads", "2"),
        ]

    log = work / f"serve-{name}.log"
    with online.service(f"carrara {name}", command, SERVICE, log, cwd=ROOT) as svc:
        svc.pids()  # recorded in online.STARTED_PIDS
        yield svc


def stub_for(channel: Any) -> Any:
    from serving.pb.carrara.v1 import prediction_pb2 as pb
    from serving.pb.carrara.v1 import prediction_pb2_grpc as pb_grpc

    stub = pb_grpc.PredictionServiceStub(channel)
    served = {m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=5).models}
    if not set(online.MODELS) <= served:
        raise RuntimeError(f"the server serves {sorted(served)}, not both of {online.MODELS}")
    return stub


# --- predict: identical replies, then latency in alternating rounds ---------------------------


def same_replies(stubs: dict[str, Any], pools: dict[tuple[str, int], list[Any]]) -> dict[str, Any]:
    """Every pooled request to both servers with return_features: the replies must be equal
    (NaN equal to NaN); missing features are counted so an empty store cannot pass unseen."""
    compared = mismatches = 0
    max_diff = 0.0
    missing = dict.fromkeys(TOPOLOGIES, 0)
    for requests in pools.values():
        for request in requests:
            probe = type(request)()
            probe.CopyFrom(request)
            probe.return_features = True
            replies = {t: stubs[t].Predict(probe, timeout=CALL_TIMEOUT_S) for t in TOPOLOGIES}
            a, b = replies[SINGLE], replies[CLUSTER]
            xs = [*a.predictions, *(v for row in a.features for v in row.values)]
            ys = [*b.predictions, *(v for row in b.features for v in row.values)]
            equal = (
                len(xs) == len(ys)
                and list(a.missing_features) == list(b.missing_features)
                and list(a.feature_names) == list(b.feature_names)
                and all(_same(x, y) for x, y in zip(xs, ys, strict=True))
            )
            if len(xs) == len(ys):
                diffs = [abs(x - y) for x, y in zip(xs, ys, strict=True) if not _same(x, y)]
                max_diff = max([max_diff, *diffs])
            compared += 1
            mismatches += not equal
            for t in TOPOLOGIES:
                missing[t] += sum(replies[t].missing_features)
    return {
        "requests": compared,
        "mismatches": mismatches,
        "max_abs_diff": max_diff,
        "missing_features": missing,
        "identical": compared > 0 and mismatches == 0,
    }


def _same(x: float, y: float) -> bool:
    return x == y or (math.isnan(x) and math.isnan(y))


def cycle(stub: Any, requests: list[Any]) -> Callable[[], Any]:
    turn = online._turns(requests)
    return lambda: stub.Predict(turn(), timeout=CALL_TIMEOUT_S)


def measure_predict(
    cfg: Config, stubs: dict[str, Any], pools: dict[tuple[str, int], list[Any]]
) -> list[dict[str, Any]]:
    samples: dict[tuple[str, int, str], list[int]] = {}
    round_p50: dict[tuple[str, int], list[float]] = {case: [] for case in cfg.cases}
    for r in range(cfg.rounds):
        order = TOPOLOGIES if r % 2 == 0 else TOPOLOGIES[::-1]
        for case in cfg.cases:
            p50 = {}
            for topology in order:
                call = cycle(stubs[topology], pools[case])
                for _ in range(cfg.warmup):
                    call()
                got = timed_calls(call, cfg.calls, cfg.budget_s)
                samples.setdefault((*case, topology), []).extend(got)
                p50[topology] = latency(got).p50_ms
            round_p50[case].append(p50[CLUSTER] - p50[SINGLE])
        print(f"  round {r + 1}/{cfg.rounds}: {', '.join(_brief_round(round_p50, r))}")
    results = []
    for model, rows in cfg.cases:
        single = latency(samples[model, rows, SINGLE])
        clustered = latency(samples[model, rows, CLUSTER])
        deltas = sorted(round_p50[model, rows])
        results.append(
            {
                "model": model,
                "rows": rows,
                SINGLE: single,
                CLUSTER: clustered,
                "p50_delta_ms": clustered.p50_ms - single.p50_ms,
                "p50_ratio": clustered.p50_ms / single.p50_ms,
                "p99_ratio": clustered.p99_ms / single.p99_ms,
                "round_p50_delta_ms": deltas,
                "round_p50_delta_median_ms": deltas[len(deltas) // 2],
            }
        )
    return results


def _brief_round(round_p50: dict[tuple[str, int], list[float]], r: int) -> list[str]:
    return [f"{m} x{n} p50 {1000 * d[r]:+.0f} us" for (m, n), d in round_p50.items()]


# --- failover -----------------------------------------------------------------------------------


def _info(port: int, section: str) -> dict[str, Any] | None:
    client = redis.Redis(port=port, socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        if section == "cluster":
            text = client.execute_command("CLUSTER", "INFO").decode()
            return dict(line.split(":", 1) for line in text.split() if ":" in line)
        return dict(client.info(section))  # type: ignore[arg-type]
    except redis.RedisError:
        return None
    finally:
        client.close()


class Watcher(threading.Thread):
    """Polls the victim's replica (role) and a surviving master (cluster_state) until told to
    stop; notes the first time each changes, in seconds after `t0_ns`."""

    def __init__(self, replica: int, survivor: int, t0_ns: int, limit_s: float) -> None:
        super().__init__(daemon=True)
        self.replica, self.survivor, self.t0_ns, self.limit_s = replica, survivor, t0_ns, limit_s
        self.events: dict[str, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        while not self.done.is_set() and time.monotonic() < deadline:
            now_s = (time.perf_counter_ns() - self.t0_ns) / 1e9
            role = _info(self.replica, "replication")
            if role and role.get("role") == "master":
                self.events.setdefault("replica_promoted_s", now_s)
            state = (_info(self.survivor, "cluster") or {}).get("cluster_state")
            if state == "fail":
                self.events.setdefault("cluster_fail_s", now_s)
            elif state == "ok" and "cluster_fail_s" in self.events:
                self.events.setdefault("cluster_ok_again_s", now_s)
            self.done.wait(POLL_S)


def failover(cfg: Config, cluster: LocalCluster, stub: Any, requests: list[Any]) -> dict[str, Any]:
    """Kill a master (SIGKILL) while calling Predict in a loop; restart it afterwards."""
    import grpc

    call = online._turns(requests)
    for _ in range(cfg.warmup):
        stub.Predict(call(), timeout=FAILOVER_CALL_TIMEOUT_S)
    victim = cluster.masters()[0]
    replication = _info(victim.port, "replication") or {}
    replica = int(replication["slave0"]["port"])  # redis-py parses slave0 into a dict
    survivor = next(n.port for n in cluster.masters() if n is not victim)
    if victim.process is None:
        raise RuntimeError(f"master :{victim.port} is not running")
    t0 = time.perf_counter_ns()
    watcher = Watcher(replica, survivor, t0, cfg.failover_s + 5)
    watcher.start()
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()
    calls: list[tuple[float, float, str]] = []  # (start s, end s, "OK" or the status code)
    deadline = t0 + int(cfg.failover_s * 1e9)
    streak = 0
    while time.perf_counter_ns() < deadline:  # bounded by the deadline
        started = time.perf_counter_ns()
        try:
            stub.Predict(call(), timeout=FAILOVER_CALL_TIMEOUT_S)
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
        calls.append(((started - t0) / 1e9, (time.perf_counter_ns() - t0) / 1e9, code))
        failed_before = any(c != "OK" for _s, _e, c in calls)
        streak = streak + 1 if code == "OK" and failed_before else 0
        if streak >= cfg.after_recovery_calls and "replica_promoted_s" in watcher.events:
            break
    watcher.done.set()
    watcher.join()
    victim.stop()
    victim.start()  # back, as a replica of the promoted node
    STARTED_PIDS.append(victim.pid or 0)
    cluster.wait_until_ok()
    return failover_report(calls, watcher.events, victim.port, replica)


def failover_report(
    calls: list[tuple[float, float, str]], events: dict[str, float], victim: int, replica: int
) -> dict[str, Any]:
    failed = [(s, e, c) for s, e, c in calls if c != "OK"]
    recovered = None
    if failed:
        last_failed_end = failed[-1][1]
        recovered = next((e for s, e, c in calls if c == "OK" and s >= last_failed_end), None)
    after = [c for s, _e, c in calls if failed and s >= failed[-1][1]]
    promoted = events.get("replica_promoted_s")
    return {
        "victim_port": victim,
        "replica_port": replica,
        "calls": len(calls),
        "failed_calls": len(failed),
        "failure_codes": sorted({c for _s, _e, c in failed}),
        "first_failure_s": failed[0][0] if failed else None,
        "calls_failed_for_s": failed[-1][1] - failed[0][0] if failed else 0.0,
        "answering_again_s": recovered,  # kill -> end of the first good call after the gap
        "ok_calls_after": sum(c == "OK" for c in after),
        "failed_calls_after": sum(c != "OK" for c in after),
        **events,
        "client_after_promotion_s": (
            recovered - promoted if recovered is not None and promoted is not None else None
        ),
        "failed_call_ms": latency([int(1e9 * (e - s)) for s, e, _c in failed]) if failed else None,
    }


# --- materialize ----------------------------------------------------------------------------


def materialize_repos(world_repo: Path, work: Path, cluster: LocalCluster, s: Scenario) -> Path:
    """The scenario's Parquet in a copy of the world repo (its plan current), views' data only;
    and that copy's cluster twin. Returns the folder holding both ("single", "cluster")."""
    root = work / "materialize"
    data = root / "data"
    data.mkdir(parents=True)
    write_data(s, data)
    single = Path(
        shutil.copytree(world_repo, root / SINGLE, ignore=shutil.ignore_patterns("*.parquet"))
    )
    for parquet in data.glob("*.parquet"):
        (single / "data" / parquet.name).hardlink_to(parquet)
    cluster_repo(single, root / CLUSTER, cluster)
    return root


def _cpu(pids: list[int]) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in pids}


def measure_materialize(
    cfg: Config, root: Path, single: RedisProcess, cluster: LocalCluster
) -> dict[str, Any]:
    from serving.batch.materialize import materialize

    s = cfg.scenario
    start, end = s.start, END
    order = [
        t
        for r in range(cfg.materialize_runs)
        for t in (TOPOLOGIES if r % 2 == 0 else TOPOLOGIES[::-1])
    ]
    runs: list[dict[str, Any]] = []
    for topology in order:  # single, cluster, cluster, single, ...: drift cancels
        flush(single, cluster, topology)
        url = single.url if topology == SINGLE else None
        servers = [single.pid] if topology == SINGLE else [n.pid for n in cluster.nodes]
        redis_before = _cpu([p for p in servers if p])
        client_before = sum(os.times()[:2])
        started = time.perf_counter()
        report = materialize(
            root / topology, start=start, end=end, views=list(MATERIALIZE_VIEWS), redis_url=url
        )
        wall_s = time.perf_counter() - started
        client_cpu_s = sum(os.times()[:2]) - client_before
        redis_cpu_s = sum(_cpu(list(redis_before)).values()) - sum(redis_before.values())
        runs.append(
            {
                "topology": topology,
                "wall_s": wall_s,
                "entity_rows": report.entity_rows,
                "written": report.written,
                "entity_rows_per_s": per_second(report.entity_rows, wall_s),
                "views_s": {v.view: v.elapsed_s for v in report.views},
                # CPU, robust to other load on the box: this process, and every redis-server
                # of the topology (the cluster's replicas included)
                "client_cpu_s": client_cpu_s,
                "redis_cpu_s": redis_cpu_s,
            }
        )
        print(
            f"  materialize {topology}: {report.entity_rows:,} entity rows in {wall_s:.2f} s "
            f"(CPU: this process {client_cpu_s:.2f} s, redis-servers {redis_cpu_s:.2f} s)"
        )
    best = {
        t: max((r for r in runs if r["topology"] == t), key=lambda r: r["entity_rows_per_s"])
        for t in TOPOLOGIES
    }
    # the last run of each topology is still in it: the same keys on both
    keys = key_counts(single, cluster)
    return {
        "scenario": asdict(s) | {"parquet_rows": s.parquet_rows, "entity_rows": s.entity_rows},
        "window": [start, end],
        "runs": runs,
        "best": best,
        "keys": keys,
        "same_key_count": keys[SINGLE] == keys[CLUSTER] == s.entity_rows,
        "ratio": best[CLUSTER]["entity_rows_per_s"] / best[SINGLE]["entity_rows_per_s"],
    }


# --- the run ----------------------------------------------------------------------------------


def run(cfg: Config, args: argparse.Namespace, work: Path, out: dict[str, Any]) -> None:
    with ExitStack() as stack:
        single = stack.enter_context(private_redis(work / "single-redis"))
        cluster = stack.enter_context(private_cluster(work / "cluster", masters=3, replicas=1))
        STARTED_PIDS.extend([single.pid or 0, *(n.pid or 0 for n in cluster.nodes)])
        print(f"redis-server :{single.port}; cluster {cluster.connection_string}")
        online_cfg = replace(online.config(_online_args(cfg)), world=cfg.world)
        world = online.prepare_world(online_cfg, work, single.port, args.models)
        out["models"] = world.models
        clustered = cluster_repo(world.repo, work / "cluster-repo", cluster)
        start = world.end - timedelta(hours=cfg.world["hours"] + 24)
        _materialize_world(clustered, start)
        out["world_keys"] = key_counts(single, cluster)
        pools = {
            (m, n): [
                online.predict_request(m, i) for i in online.request_pool(world, m, n, cfg.pool)
            ]
            for m, n in cfg.cases
        }
        import grpc

        single_svc = stack.enter_context(
            server(SINGLE, world.repo, world.registry, work, world.redis_url)
        )
        cluster_svc = stack.enter_context(
            server(CLUSTER, clustered, world.registry, work, redis_url=None)
        )
        channels = {
            t: stack.enter_context(grpc.insecure_channel(svc.target))
            for t, svc in ((SINGLE, single_svc), (CLUSTER, cluster_svc))
        }
        stubs = {t: stub_for(c) for t, c in channels.items()}
        out["predictions"] = same_replies(stubs, pools)
        print(f"  predictions: {out['predictions']}")
        out["predict"] = measure_predict(cfg, stubs, pools)
        failover_case = max(cfg.cases, key=lambda c: (c[0] == "eta", c[1]))
        out["failover"] = {"model": failover_case[0], "rows": failover_case[1]}
        out["failover"] |= failover(cfg, cluster, stubs[CLUSTER], pools[failover_case])
        print(f"  failover: {out['failover']}")
        for svc in (single_svc, cluster_svc):
            stop_tree(svc.process)
        root = materialize_repos(world.repo, work, cluster, cfg.scenario)
        out["materialize"] = measure_materialize(cfg, root, single, cluster)


def _online_args(cfg: Config) -> argparse.Namespace:
    return argparse.Namespace(small=cfg.small, processes=(1,), threads=2, clients=1)


def _materialize_world(repo: Path, start: datetime) -> None:
    from serving.batch.materialize import materialize

    started = time.perf_counter()
    report = materialize(repo, start=start, end=datetime.now(UTC))
    took_s = time.perf_counter() - started
    print(f"  world into the cluster: {report.written:,} rows in {took_s:.1f} s")


def targets(out: dict[str, Any]) -> dict[str, bool]:
    cases = {(r["model"], r["rows"]): r for r in out["predict"]}
    f = out["failover"]
    return {
        TARGET_ETA1: cases["eta", 1]["p50_delta_ms"] <= 0.15,
        TARGET_ETA100: cases["eta", 100]["p50_ratio"] <= 1.5,
        TARGET_MATERIALIZE: out["materialize"]["ratio"] >= 0.8,
        TARGET_FAILOVER: (
            f["failed_calls"] > 0
            and f["failure_codes"] == ["UNAVAILABLE"]
            and f["answering_again_s"] is not None
            and f["failed_calls_after"] == 0
            and f["ok_calls_after"] > 0
        ),
    }


def ratios(out: dict[str, Any]) -> dict[str, Any]:
    cases = {(r["model"], r["rows"]): r for r in out["predict"]}
    f = out["failover"]
    return {
        "eta1_p50_cluster_minus_single_ms": cases["eta", 1]["p50_delta_ms"],
        "eta100_p50_cluster_over_single": cases["eta", 100]["p50_ratio"],
        "materialize_cluster_over_single": out["materialize"]["ratio"],
        "failover_calls_failed_for_s": f["calls_failed_for_s"],
        "failover_answering_again_s": f["answering_again_s"],
        "failover_replica_promoted_s": f.get("replica_promoted_s"),
    }


def report(out: dict[str, Any]) -> str:
    rows = []
    for r in out["predict"]:
        a, b = r[SINGLE], r[CLUSTER]
        rows.append(
            [
                f"Predict {r['model']}",
                r["rows"],
                *(round(x, 3) for x in (a.p50_ms, a.p99_ms, b.p50_ms, b.p99_ms)),
                round(r["p50_delta_ms"], 3),
                round(r["round_p50_delta_median_ms"], 3),
                round(r["p50_ratio"], 2),
                f"{a.count}/{b.count}",
            ]
        )
    headers = ["case", "rows", "single p50 ms", "p99", "cluster p50 ms", "p99"]
    headers += ["p50 diff ms", "median of rounds' diff", "p50 ratio", "calls"]
    m = out["materialize"]
    mat = [
        [t, m["scenario"]["entity_rows"], round(m["best"][t]["wall_s"], 2),
         round(m["best"][t]["entity_rows_per_s"]),
         round(m["best"][t]["client_cpu_s"], 2), round(m["best"][t]["redis_cpu_s"], 2),
         ", ".join(f"{r['wall_s']:.2f}" for r in m["runs"] if r["topology"] == t)]
        for t in TOPOLOGIES
    ]  # fmt: skip
    f = out["failover"]
    mat_headers = ["materialize", "entity rows", "best wall s", "entity rows/s", "CPU s: client"]
    lines = [
        table(rows, headers),
        "",
        table(mat, [*mat_headers, "redis", "runs s"]),
        f"keys after: {m['keys']}",
        "",
        f"failover ({f['model']} x{f['rows']} in a loop; master :{f['victim_port']} killed at 0 s,"
        f" its replica :{f['replica_port']}):",
        f"  cluster: state fail at {_s(f.get('cluster_fail_s'))}, replica promoted at "
        f"{_s(f.get('replica_promoted_s'))}, state ok at {_s(f.get('cluster_ok_again_s'))}",
        f"  client: {f['failed_calls']} of {f['calls']} calls failed "
        f"({', '.join(f['failure_codes'])}) from {_s(f['first_failure_s'])} "
        f"for {_s(f['calls_failed_for_s'])}; answering again "
        f"at {_s(f['answering_again_s'])} ({_s(f['client_after_promotion_s'])} after the "
        f"promotion), then {f['ok_calls_after']} good calls, {f['failed_calls_after']} failed",
    ]
    return "\n".join(lines)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "cluster.json")
    parser.add_argument("--workdir", type=Path, default=None, help="kept after the run if given")
    parser.add_argument(
        "--models", type=Path, default=None, help="copy this model registry (eta, pricing)"
    )
    args = parser.parse_args(argv)
    cfg = config(args.small)
    # SIGTERM unwinds like Ctrl-C, so every process started so far is stopped by its pid
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="carrara-cluster-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {**stamp(), "small": cfg.small, "config": asdict(cfg)}
    out["load_average_at_start"] = list(os.getloadavg())
    try:
        run(cfg, args, work, out)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    out["targets"] = targets(out)
    out["ratios"] = ratios(out)
    started = [p for p in STARTED_PIDS + online.STARTED_PIDS if p]
    out["started_pids"] = started
    out["left_running"] = [pid for pid in started if online._running(pid)]
    write_json(args.out, out)
    print()
    print(report(out))
    print()
    for name, value in out["ratios"].items():
        print(f"{name}: {'-' if value is None else f'{value:.3f}'}")
    for check, ok in out["targets"].items():
        print(f"{'PASS' if ok else 'MISS'}  {check}")
    print(f"-> {args.out}")
    if out["left_running"]:
        print(f"processes still running: {out['left_running']}", file=sys.stderr)
    return 0 if out["predictions"]["identical"] and not out["left_running"] else 1


if __name__ == "__main__":
    sys.exit(main())
