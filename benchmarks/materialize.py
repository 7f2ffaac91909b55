"""Benchmark: `carrara materialize` against `feast materialize`, same data, same run.

Two scenarios on the sample repo's driver_stats and zone_stats views:
- window_100k: 100,000 drivers x 24 hourly snapshots + 2,000 zones every 5 minutes for 24 h
  (~2.98 M Parquet rows -> 102,000 entity rows);
- drivers_1m: 1,000,000 drivers x 3 hourly snapshots (3 M rows -> 1 M entity rows).

Each tool runs as its own process (wall time and peak RSS from os.wait4) on its own copy of
one applied repo (so Carrara's serving plan is current), into its own database of one private
redis-server; the two databases must then be identical (same keys, and the same value digest
per key). Targets: at 1 M drivers >= 15x Feast's entity rows/s at <= 1/4 of its peak RSS; at
the 100 k window the whole command >= 8x faster.

    python -m benchmarks.materialize [--small] [--out benchmarks/out/materialize.json]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import redis

from benchmarks.harness import ROOT, per_second, redis_server, run_child, stamp, table, write_json

END = datetime(2026, 11, 1, tzinfo=UTC)
TS = pa.timestamp("us", tz="UTC")
VEHICLES = np.array(["economy", "comfort", "xl", "moto"], dtype=object)
DRIVER_CHUNK = 250_000
BIN = Path(sys.executable).parent
FEAST_DB, CARRARA_DB = 0, 1


@dataclass(frozen=True)
class Scenario:
    name: str
    drivers: int
    driver_hours: int  # hourly snapshots
    zones: int
    zone_hours: int  # of 5-minute rows

    @property
    def start(self) -> datetime:
        return END - timedelta(hours=max(self.driver_hours, self.zone_hours) + 1)

    @property
    def views(self) -> list[str]:
        return ["driver_stats"] + (["zone_stats"] if self.zones else [])

    @property
    def parquet_rows(self) -> int:
        return self.drivers * self.driver_hours + self.zones * self.zone_hours * 12

    @property
    def entity_rows(self) -> int:
        return self.drivers + self.zones

    @property
    def values(self) -> int:
        return 7 * self.drivers + 7 * self.zones  # features per view: 7 and 7


FULL = [Scenario("window_100k", 100_000, 24, 2_000, 24), Scenario("drivers_1m", 1_000_000, 3, 0, 0)]
SMALL = [Scenario("window_100k", 2_000, 24, 40, 24), Scenario("drivers_1m", 5_000, 3, 0, 0)]


# --- data -----------------------------------------------------------------------------------


def _driver_tables(s: Scenario, rng: np.random.Generator) -> Iterator[pa.Table]:
    for hour in range(s.driver_hours, 0, -1):
        ts = END - timedelta(hours=hour)
        for lo in range(0, s.drivers, DRIVER_CHUNK):
            n = min(DRIVER_CHUNK, s.drivers - lo)
            rating = rng.normal(4.7, 0.2, n).astype(np.float32)
            yield pa.table(
                {
                    "driver_id": np.arange(lo + 1, lo + n + 1, dtype=np.int64),
                    "event_timestamp": pa.array(np.full(n, ts), TS),
                    "created": pa.array(np.full(n, ts + timedelta(minutes=1)), TS),
                    "acceptance_rate": rng.random(n).astype(np.float32),
                    "cancel_rate": rng.random(n).astype(np.float32) / 10,
                    "avg_rating": pa.array(rating, mask=rng.random(n) < 0.01),
                    "trips_today": rng.poisson(10, n).astype(np.int64),
                    "online_minutes_today": rng.integers(0, 600, n).astype(np.int64),
                    "avg_speed_kph_7d": rng.normal(32, 4, n).astype(np.float32),
                    "vehicle_type": pa.array(VEHICLES[rng.integers(0, 4, n)], pa.string()),
                }
            )


def _zone_tables(s: Scenario, rng: np.random.Generator) -> Iterator[pa.Table]:
    slots = s.zone_hours * 12
    first = END - timedelta(hours=s.zone_hours)
    for day in range(0, slots, 288):
        count = min(288, slots - day)
        offsets = np.repeat(np.arange(day, day + count), s.zones) * 300
        ts = np.datetime64(first.replace(tzinfo=None), "us") + offsets.astype("timedelta64[s]")
        n = len(offsets)
        yield pa.table(
            {
                "zone_id": np.tile(np.arange(s.zones, dtype=np.int64), count),
                "event_timestamp": pa.array(ts, pa.timestamp("us")).cast(TS),
                "created": pa.array(ts + np.timedelta64(20, "s"), pa.timestamp("us")).cast(TS),
                "open_requests": rng.poisson(12, n).astype(np.int64),
                "available_drivers": rng.poisson(15, n).astype(np.int64),
                "demand_supply_ratio": rng.random(n) * 2,
                "avg_pickup_wait_s": rng.normal(120, 30, n),
                "surge_15m": 1 + rng.random(n),
                "rain_mm": rng.exponential(0.5, n),
                "traffic_index": rng.random(n),
            }
        )


def write_data(s: Scenario, data: Path) -> None:
    """Deterministic Parquet (fixed seed), a row group per table written."""
    rng = np.random.default_rng(20261101)
    tables = {"driver_stats": _driver_tables(s, rng)}
    if s.zones:
        tables["zone_stats"] = _zone_tables(s, rng)
    for name, parts in tables.items():
        writer = None
        for part in parts:
            if writer is None:
                writer = pq.ParquetWriter(data / f"{name}.parquet", part.schema, compression="zstd")
            writer.write_table(part)
        if writer is not None:
            writer.close()


# --- repos ----------------------------------------------------------------------------------


def _write_config(repo: Path, port: int, db: int) -> None:
    config = (ROOT / "feature_repo" / "feature_store.yaml").read_text()
    config = config.replace('"127.0.0.1:6379"', f'"127.0.0.1:{port},db={db}"')
    (repo / "feature_store.yaml").write_text(config)


def applied_repo(work: Path, port: int) -> Path:
    """feature_repo/ `carrara apply`'d once (Feast apply + serving plan); copies stay current."""
    repo = work / "applied"
    shutil.copytree(
        ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__")
    )
    (repo / "data").mkdir()
    _write_config(repo, port, FEAST_DB)
    run = run_child([str(BIN / "carrara"), "apply", "--repo", str(repo)])
    if run.returncode:
        raise RuntimeError(f"carrara apply failed:\n{run.stderr[-2000:]}")
    return repo


def copy_repo(applied: Path, target: Path, data: Path, port: int, db: int) -> Path:
    shutil.copytree(applied, target)
    _write_config(target, port, db)
    for parquet in data.glob("*.parquet"):
        (target / "data" / parquet.name).hardlink_to(parquet)
    return target


# --- runs -----------------------------------------------------------------------------------


def run_feast(s: Scenario, repo: Path) -> Any:
    views = [arg for view in s.views for arg in ("-v", view)]
    return run_child(
        [str(BIN / "feast"), "materialize", s.start.isoformat(), END.isoformat(), *views], cwd=repo
    )


def run_carrara(s: Scenario, repo: Path) -> Any:
    args = ["--start", s.start.isoformat(), "--end", END.isoformat(), "--views", ",".join(s.views)]
    return run_child([str(BIN / "carrara"), "materialize", "--repo", str(repo), *args])


def identical(port: int, sample: int = 2_000) -> dict[str, Any]:
    """Same keys and, per key, the same value digest (DEBUG DIGEST-VALUE: order-free); the
    first `sample` keys are also compared field by field, TTLs included."""
    # Any: redis-py annotates replies as `Awaitable[T] | T` and keys as str
    a: Any = redis.Redis(port=port, db=FEAST_DB)
    b: Any = redis.Redis(port=port, db=CARRARA_DB)
    keyspace = a.info("keyspace")
    same_counts = keyspace.get(f"db{FEAST_DB}") == keyspace.get(f"db{CARRARA_DB}")
    checked = differing = 0
    for keys in _key_chunks(a):
        da = a.execute_command("DEBUG", "DIGEST-VALUE", *keys)
        db = b.execute_command("DEBUG", "DIGEST-VALUE", *keys)
        differing += sum(x != y for x, y in zip(da, db, strict=True))
        if checked < sample:
            differing += sum(
                (a.hgetall(k), a.ttl(k)) != (b.hgetall(k), b.ttl(k)) for k in keys[:100]
            )
        checked += len(keys)
    return {
        "keys": checked,
        "same_key_counts": same_counts,
        "differing": differing,
        "identical": same_counts and differing == 0 and checked > 0,
    }


def _key_chunks(client: Any) -> Iterator[list[bytes]]:
    cursor = None
    while cursor != 0:  # SCAN ends when the cursor comes back to 0
        cursor, keys = client.scan(cursor or 0, count=1_000)
        if keys:
            yield keys


def run_scenario(s: Scenario, applied: Path, work: Path, port: int) -> dict[str, Any]:
    data = work / s.name / "data"
    data.mkdir(parents=True)
    write_data(s, data)
    redis.Redis(port=port).flushall()
    results: dict[str, Any] = {
        "parquet_rows": s.parquet_rows,
        "entity_rows": s.entity_rows,
        "values": s.values,
    }
    for tool, db, runner in (("feast", FEAST_DB, run_feast), ("carrara", CARRARA_DB, run_carrara)):
        repo = copy_repo(applied, work / s.name / tool, data, port, db)
        run = runner(s, repo)
        if run.returncode:
            raise RuntimeError(f"{tool} materialize failed ({s.name}):\n{run.stderr[-3000:]}")
        results[tool] = {
            "wall_s": run.wall_s,
            "peak_rss_mb": run.peak_rss_mb,
            "entity_rows_per_s": per_second(s.entity_rows, run.wall_s),
            "values_per_s": per_second(s.values, run.wall_s),
        }
    results["comparison"] = identical(port)
    feast, carrara = results["feast"], results["carrara"]
    results["speedup"] = feast["wall_s"] / carrara["wall_s"]
    results["rss_ratio"] = carrara["peak_rss_mb"] / feast["peak_rss_mb"]
    return results


def targets(results: dict[str, Any]) -> dict[str, bool]:
    checks = {"Redis identical": all(r["comparison"]["identical"] for r in results.values())}
    if "drivers_1m" in results:
        million = results["drivers_1m"]
        checks["1m: >= 15x Feast's entity rows/s"] = million["speedup"] >= 15
        checks["1m: <= 1/4 of Feast's peak RSS"] = million["rss_ratio"] <= 0.25
    if "window_100k" in results:
        checks["100k window: >= 8x faster"] = results["window_100k"]["speedup"] >= 8
    return checks


def report(results: dict[str, Any]) -> str:
    rows = []
    for name, r in results.items():
        for tool in ("feast", "carrara"):
            t = r[tool]
            speed = [round(t["wall_s"], 2), round(t["entity_rows_per_s"]), round(t["values_per_s"])]
            rows.append(
                [name, tool, r["parquet_rows"], r["entity_rows"], *speed, round(t["peak_rss_mb"])]
            )
    headers = ["scenario", "tool", "parquet rows", "entity rows", "wall s"]
    headers += ["entity rows/s", "values/s", "peak RSS MB"]
    lines = [table(rows, headers), ""]
    for name, r in results.items():
        lines.append(
            f"{name}: identical={r['comparison']['identical']} ({r['comparison']['keys']:,} keys); "
            f"carrara is {r['speedup']:.1f}x faster at {r['rss_ratio']:.2f}x Feast's peak RSS"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "out" / "materialize.json"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="kept after the run if given")
    parser.add_argument("--only", choices=[s.name for s in FULL], help="one scenario")
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="carrara-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        with redis_server(work, extra_args=["--enable-debug-command", "yes"]) as port:
            applied = applied_repo(work, port)
            scenarios = [s for s in (SMALL if args.small else FULL) if args.only in (None, s.name)]
            results = {s.name: run_scenario(s, applied, work, port) for s in scenarios}
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    checks = targets(results)
    write_json(args.out, {**stamp(), "small": args.small, "scenarios": results, "targets": checks})
    print(report(results))
    for check, ok in checks.items():
        print(f"{'PASS' if ok else 'MISS'}  {check}")
    print(f"-> {args.out}")
    return 0 if checks["Redis identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
