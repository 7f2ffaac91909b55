"""Benchmark: Carrara's `Push` RPC against Feast's own `store.push`, 100 rows, same Redis.

The world is `feast init`'s template (benchmarks/feast_online.py builds it): its push source
`driver_stats_push_source` feeds `driver_hourly_stats_fresh` (Float32, Int64, Map, Json and
Struct features). Each call pushes 100 rows for 100 drivers, event times moving forward so
every row is written (none is older than stored):
  carrara      `carrara serve` as its own process, `PredictionClient.push` from this process;
  feast_push   `FeatureStore.push(source, DataFrame)` in this process (the DataFrame built
               once, its timestamps moved per call).
Rounds alternate the two; rows/s from the p50 call. That both write the same bytes is proven
by tests/integration/test_feast_template.py, not here.

    python -m benchmarks.push [--small] [--out benchmarks/out/push.json]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.feast_online import apply_and_materialize, carrara_server, template_repo
from benchmarks.harness import (
    ROOT,
    latency,
    per_second,
    redis_server,
    stamp,
    table,
    timed_calls,
    write_json,
)
from serving.repo.compile import feast_context

SOURCE = "driver_stats_push_source"
TARGET_RATIO = 10.0  # issue #16: Push of 100 rows at least 10x Feast's store.push rows/s


@dataclass(frozen=True)
class Sizes:
    rows: int
    rounds: int
    calls_per_round: int
    warmup: int


FULL = Sizes(rows=100, rounds=6, calls_per_round=50, warmup=10)
SMALL = Sizes(rows=100, rounds=2, calls_per_round=3, warmup=1)


class Rows:
    """100 drivers' rows, their event times one second later at each call."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0
        self.start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)

    def next(self) -> dict[str, list[Any]]:
        self.calls += 1
        when = self.start + timedelta(seconds=self.calls)
        return {
            "driver_id": list(range(1, self.n + 1)),
            "event_timestamp": [when] * self.n,
            "conv_rate": [0.5] * self.n,
            "acc_rate": [0.25] * self.n,
            "avg_daily_trips": list(range(self.n)),
            "driver_metadata": [{"vehicle_type": "suv", "rating": "4.5"}] * self.n,
            "driver_config": ['{"max_distance_km": 5}'] * self.n,
            "driver_profile": [{"name": "n", "age": "40"}] * self.n,
        }


def carrara_pusher(client: Any, rows: Rows) -> Callable[[], object]:
    def call() -> object:
        batch = rows.next()
        micros = [int(t.timestamp() * 1_000_000) for t in batch["event_timestamp"]]
        reply = client.push(SOURCE, {**batch, "event_timestamp": micros})
        if reply.rows_written != rows.n:
            raise RuntimeError(f"Push wrote {reply.rows_written} of {rows.n} rows")
        return reply

    return call


def feast_pusher(repo: Path, rows: Rows) -> Callable[[], object]:
    import pandas as pd

    with feast_context(repo):
        from feast import FeatureStore

        store = FeatureStore(repo_path=str(repo))
    frame = pd.DataFrame(rows.next())

    def call() -> object:
        batch = rows.next()
        frame["event_timestamp"] = batch["event_timestamp"]
        frame["created"] = batch["event_timestamp"]
        with feast_context(repo):
            store.push(SOURCE, frame)
        return None

    return call


def measure(callers: dict[str, Callable[[], object]], sizes: Sizes) -> dict[str, Any]:
    samples: dict[str, list[int]] = {name: [] for name in callers}
    for call in callers.values():
        for _ in range(sizes.warmup):
            call()
    for round_ in range(sizes.rounds):  # the order alternates: drift hits both alike
        names = list(callers)[:: 1 if round_ % 2 == 0 else -1]
        for name in names:
            samples[name] += timed_calls(callers[name], sizes.calls_per_round)
    results = {}
    for name, taken in samples.items():
        found = latency(taken)
        results[name] = {**asdict(found), "rows_per_s": per_second(sizes.rows, found.p50_ms / 1e3)}
    return results


def run(sizes: Sizes, work: Path) -> dict[str, Any]:
    from serving.client import PredictionClient

    with ExitStack() as stack:
        port = stack.enter_context(redis_server(work))
        repo = template_repo(work, port)
        apply_and_materialize(repo)
        served = stack.enter_context(carrara_server(repo, f"redis://127.0.0.1:{port}/0", work))
        client = stack.enter_context(PredictionClient(f"127.0.0.1:{served}", timeout_s=30))
        rows = Rows(sizes.rows)
        callers = {"carrara": carrara_pusher(client, rows), "feast_push": feast_pusher(repo, rows)}
        load_before = os.getloadavg()
        results = measure(callers, sizes)
    ratio = results["carrara"]["rows_per_s"] / results["feast_push"]["rows_per_s"]
    return {
        **stamp(),
        "small": sizes == SMALL,
        "rows_per_push": sizes.rows,
        "results": results,
        "rows_per_s_ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "met": ratio >= TARGET_RATIO,
        "load_average_before": load_before,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "push.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="carrara-push-") as work:
        out = run(SMALL if args.small else FULL, Path(work))
    rows = [
        [name, r["count"], r["p50_ms"], r["p99_ms"], round(r["rows_per_s"])]
        for name, r in out["results"].items()
    ]
    print(table(rows, ["variant", "calls", "p50 ms", "p99 ms", "rows/s (p50)"]))
    verdict = "met" if out["met"] else "not met"
    print(
        f"rows/s carrara/feast_push: {out['rows_per_s_ratio']:.1f}x "
        f"(target >= {TARGET_RATIO:g}x: {verdict})"
    )
    write_json(args.out, out)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
