"""Benchmark: `carrara score` against the naive pipeline a user would write, in the same run.

World: the sample world (2,000 drivers, 64 zones, 48 h) with 1,000,000 trips; the trips file
(entity keys, request data, event time per row) is the request file. An eta model is trained
by `carrara train eta` on a 20-minute window of those labels.

- carrara: `carrara score --model eta --input trips.parquet --output ...`, a child process.
- naive: pandas reads the requests, Feast's `get_historical_features(entity_df, the feature
  service, full_feature_names=True, filter_by_created_timestamp=True)` joins them, category
  codes from the model card, `Booster.predict`, pandas writes Parquet; a child process too.
Wall time and peak RSS of each child come from os.wait4 (benchmarks/harness.py).

Feast's file offline store first joins every entity row with *every* feature row of its key
(a zone has 588 rows here), so its time and memory grow with rows x history: it is run on
random samples of growing size (each also scored by carrara) until one exceeds the time
budget. Its 1 M figures are extrapolated from the two largest completed sizes: the marginal
wall time and peak RSS per row between them, added to the largest (Feast's fixed costs, an
import of ~5-10 s among them, are paid once; its marginal cost per row fell with size up to
there, so the extrapolation may be off either way, and is labelled as such).

Agreement: for every sample, Feast's predictions must equal carrara's exactly on the rows
Feast returns (it silently drops rows sharing keys and time; those are counted), and
carrara's sample predictions must equal its 1 M run's at the same rows.

    python -m benchmarks.batch_score [--small] [--out benchmarks/out/batch_score.json]
    python -m benchmarks.batch_score --small --repo R --registry M   # an existing world
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.harness import ROOT, ChildRun, per_second, run_child, stamp, table, write_json

BIN = Path(sys.executable).parent
END = datetime(2026, 11, 1, tzinfo=UTC)
SEED = 20261101


@dataclass(frozen=True)
class Size:
    drivers: int
    zones: int
    hours: int
    trips: int
    train_minutes: int  # labels the model is trained on: the last minutes of the window
    naive_rows: tuple[int, ...]  # sample sizes for the naive pipeline, tried in order
    naive_budget_s: float  # no larger sample once one takes longer than this


FULL = Size(2_000, 64, 48, 1_000_000, 20, (2_000, 8_000, 16_000), 300.0)
SMALL = Size(200, 16, 6, 6_000, 120, (300, 600), 120.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/batch_score.json")
    parser.add_argument("--repo", type=Path, help="use this applied repo (its data/trips.parquet)")
    parser.add_argument("--registry", type=Path, help="with --repo: a registry holding eta")
    parser.add_argument("--naive-rows", type=_sizes, help="naive sample sizes, e.g. 2000,8000")
    parser.add_argument("--naive-child", nargs=4, metavar=("REPO", "REGISTRY", "IN", "OUT"))
    args = parser.parse_args(argv)
    if args.naive_child:
        return naive_pipeline(*map(Path, args.naive_child))
    size = SMALL if args.small else FULL
    if args.naive_rows:
        size = replace(size, naive_rows=args.naive_rows)
    work = Path(tempfile.mkdtemp(prefix="carrara-batch-bench-"))
    try:
        if args.repo:
            repo, registry = args.repo.resolve(), args.registry.resolve()
        else:
            repo, registry = build_world(size, work)
        result = benchmark(size, repo, registry, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.update(stamp(), small=args.small)
    result["naive_extrapolated"] = extrapolate(result)
    write_json(args.out, result)
    report(result)
    return 0


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


# --- the world ------------------------------------------------------------------------------


def checked(run: ChildRun, what: str) -> ChildRun:
    if run.returncode:
        raise RuntimeError(f"{what} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    return run


def build_world(size: Size, work: Path) -> tuple[Path, Path]:
    """Sample data, `carrara apply`, `carrara train eta` on the window's last minutes."""
    repo, registry = work / "feature_repo", work / "models"
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__py*"))
    carrara = str(BIN / "carrara")
    world = [f"--{k}={v}" for k, v in (("drivers", size.drivers), ("zones", size.zones))]
    world += [f"--hours={size.hours}", f"--trips={size.trips}", f"--end={END.isoformat()}"]
    checked(run_child([carrara, "sample-data", "--out", str(repo / "data"), *world]), "data")
    checked(run_child([carrara, "apply", "--repo", str(repo)]), "carrara apply")
    start = END - timedelta(minutes=size.train_minutes)
    train = ["--repo", str(repo), "--registry", str(registry), "--start", start.isoformat()]
    checked(run_child([carrara, "train", "eta", *train]), "carrara train eta")
    return repo, registry


# --- the runs -------------------------------------------------------------------------------


def run_carrara(repo: Path, registry: Path, source: Path, output: Path) -> ChildRun:
    args = ["--model", "eta", "--input", str(source), "--output", str(output)]
    args += ["--repo", str(repo), "--registry", str(registry)]
    return checked(run_child([str(BIN / "carrara"), "score", *args]), "carrara score")


def run_naive(repo: Path, registry: Path, source: Path, output: Path) -> ChildRun:
    child = [sys.executable, "-m", "benchmarks.batch_score", "--naive-child"]
    return run_child([*child, str(repo), str(registry), str(source), str(output)], cwd=ROOT)


def sample(requests: Path, rows: int, work: Path) -> tuple[Path, np.ndarray]:
    """`rows` request rows drawn at random (a `row` column keeps their position)."""
    total = pq.read_metadata(requests).num_rows
    picked = np.sort(np.random.default_rng(SEED + rows).choice(total, rows, replace=False))
    taken = pq.read_table(requests).take(pa.array(picked))
    path = work / f"sample_{rows}.parquet"
    pq.write_table(taken.append_column("row", pa.array(picked)), path)
    return path, picked


def benchmark(size: Size, repo: Path, registry: Path, work: Path) -> dict[str, Any]:
    requests = repo / "data" / "trips.parquet"
    total = pq.read_metadata(requests).num_rows
    full = run_carrara(repo, registry, requests, work / "carrara_all.parquet")
    all_predictions = pq.read_table(work / "carrara_all.parquet").column("prediction").to_numpy()
    runs = []
    for rows in (r for r in size.naive_rows if r <= total):
        source, picked = sample(requests, rows, work)
        carrara = run_carrara(repo, registry, source, work / f"carrara_{rows}.parquet")
        naive = run_naive(repo, registry, source, work / f"naive_{rows}.parquet")
        entry: dict[str, Any] = {
            "rows": rows,
            "carrara": _figures(carrara, rows),
            "naive": _figures(naive, rows),
        }
        ours = pq.read_table(work / f"carrara_{rows}.parquet").column("prediction").to_numpy()
        entry["carrara_sample_equals_full_run"] = bool(
            np.array_equal(ours, all_predictions[picked])
        )
        if naive.returncode:
            entry["naive"]["error"] = naive.stderr[-1500:]
            runs.append(entry)
            break
        entry["naive"]["phases_s"] = json.loads(naive.stdout.strip().splitlines()[-1])
        entry["agreement"] = agreement(work / f"naive_{rows}.parquet", picked, ours)
        runs.append(entry)
        if naive.wall_s > size.naive_budget_s:
            break
    return {"requests": total, "carrara_full": _figures(full, total), "samples": runs}


def _figures(run: ChildRun, rows: int) -> dict[str, Any]:
    return {
        "returncode": run.returncode,
        "wall_s": round(run.wall_s, 3),
        "rows_per_s": round(per_second(rows, run.wall_s), 1),
        "peak_rss_mb": round(run.peak_rss_mb, 1),
    }


def agreement(naive_output: Path, picked: np.ndarray, ours: np.ndarray) -> dict[str, Any]:
    """Feast's predictions against carrara's for the same rows (rows Feast dropped counted)."""
    theirs = pq.read_table(naive_output)
    position = np.searchsorted(picked, theirs.column("row").to_numpy())
    diff = np.abs(theirs.column("prediction").to_numpy() - ours[position])
    return {
        "rows_returned": theirs.num_rows,
        "rows_dropped_by_feast": len(picked) - len(np.unique(position)),
        "rows_differing": int((diff != 0).sum()),
        "max_abs_difference": float(diff.max(initial=0.0)),
    }


# --- the naive pipeline (a child process) ---------------------------------------------------


def naive_pipeline(repo: Path, registry: Path, source: Path, output: Path) -> int:
    """What a user writes with pandas, Feast and LightGBM; prints its phases as JSON."""
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def lap(name: str) -> None:
        phases[name] = round(time.perf_counter() - started - sum(phases.values()), 3)

    import pandas as pd
    from feast import FeatureStore

    from serving.models.registry import ModelRegistry

    lap("import")
    model = ModelRegistry(registry).load("eta")
    card = model.card
    inputs = ["row", "event_timestamp", *(c.name for c in (*card.entities, *card.request_fields))]
    entity_df = pd.read_parquet(source, columns=inputs)
    sys.path.insert(0, str(repo))  # the on-demand views `import transforms`
    store = FeatureStore(repo_path=str(repo))
    lap("read")
    frame = store.get_historical_features(
        entity_df=entity_df,
        features=store.get_feature_service(card.feature_service),
        full_feature_names=True,
        filter_by_created_timestamp=True,  # without it, rows created after t leak in
    ).to_df()
    lap("retrieval")
    x = np.column_stack(
        [
            card.category_codes(ref, frame[ref])
            if ref in card.categorical_levels
            else frame[ref].to_numpy(np.float64, na_value=np.nan)
            for ref in card.feature_refs
        ]
    )
    frame["prediction"] = model.booster.predict(x)
    lap("predict")
    frame[["row", "prediction"]].to_parquet(output)
    lap("write")
    print(json.dumps(phases))
    return 0


def extrapolate(result: dict[str, Any]) -> dict[str, Any] | None:
    """Naive wall time and peak RSS at the full row count, from the marginal cost per row
    between the two largest completed samples (from the largest alone when only one)."""
    done = [s for s in result["samples"] if "agreement" in s]
    if not done:
        return None
    last, rows = done[-1], result["requests"]
    wall, rss = last["naive"]["wall_s"], last["naive"]["peak_rss_mb"]
    if len(done) > 1:
        before = done[-2]
        step = last["rows"] - before["rows"]
        s_per_row = (wall - before["naive"]["wall_s"]) / step
        mb_per_row = (rss - before["naive"]["peak_rss_mb"]) / step
    else:
        s_per_row, mb_per_row = wall / last["rows"], rss / last["rows"]
    wall_s = wall + s_per_row * (rows - last["rows"])
    return {
        "rows": rows,
        "from_rows": [s["rows"] for s in done[-2:]],
        "wall_s": round(wall_s, 1),
        "rows_per_s": round(per_second(rows, wall_s), 1),
        "peak_rss_mb_one_call": round(rss + mb_per_row * (rows - last["rows"]), 0),
        "machine_memory_mb": round(stamp()["machine"]["memory_gb"] * 1024, 0),
    }


# --- the report -----------------------------------------------------------------------------


def report(result: dict[str, Any]) -> None:
    full, samples = result["carrara_full"], result["samples"]
    rows = [
        ["carrara", result["requests"], full["wall_s"], full["rows_per_s"], full["peak_rss_mb"]]
    ]
    for s in samples:
        for tool in ("carrara", "naive"):
            f = s[tool]
            rows.append([tool, s["rows"], f["wall_s"], f["rows_per_s"], f["peak_rss_mb"]])
    print(table(rows, ["pipeline", "rows", "wall s", "rows/s", "peak RSS MB"]))
    for s in samples:
        a = s.get("agreement")
        status = (
            "naive FAILED"
            if a is None
            else (
                f"{a['rows_returned']:,} rows back, {a['rows_dropped_by_feast']:,} dropped by "
                f"Feast, {a['rows_differing']} differing (max |diff| {a['max_abs_difference']:g})"
            )
        )
        print(
            f"sample {s['rows']:,}: {status}; carrara sample == full run: "
            f"{s['carrara_sample_equals_full_run']}"
        )
    done = [s for s in samples if "agreement" in s]
    if not done:
        print("ratio: no naive run completed")
        return
    x = result["naive_extrapolated"]
    fits = x["peak_rss_mb_one_call"] <= x["machine_memory_mb"]
    print(
        f"naive at {x['rows']:,} rows: NOT RUN, extrapolated from {x['from_rows']} rows: "
        f"{x['wall_s']:,.0f} s ({x['rows_per_s']:,.1f} rows/s), peak RSS in one call "
        f"{x['peak_rss_mb_one_call']:,.0f} MB ("
        + ("fits" if fits else "exceeds")
        + f" this machine's {x['machine_memory_mb']:,.0f} MB)"
    )
    last = done[-1]
    print(
        f"same size ({last['rows']:,} rows): carrara {last['carrara']['rows_per_s']:,.0f} "
        f"rows/s, {last['carrara']['peak_rss_mb']:,.0f} MB; naive "
        f"{last['naive']['rows_per_s']:,.1f} rows/s, {last['naive']['peak_rss_mb']:,.0f} MB"
    )
    print(
        f"ratio at {result['requests']:,} rows (naive extrapolated): "
        f"{full['rows_per_s'] / x['rows_per_s']:,.0f}x the rows/s; peak RSS "
        f"{full['peak_rss_mb']:,.0f} MB vs {last['naive']['peak_rss_mb']:,.0f} MB measured at "
        f"{last['rows']:,} rows"
    )


if __name__ == "__main__":
    sys.exit(main())
