"""`carrara sample-data`: write the sample ride-hailing world as Parquet."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from serving.cli.arguments import DEFAULT_REPO, Subparsers, count, timestamp


def add(commands: Subparsers) -> None:
    p = commands.add_parser("sample-data", help="generate the sample ride-hailing world as Parquet")
    p.add_argument(
        "--out", type=Path, default=DEFAULT_REPO / "data", help="folder (default: %(default)s)"
    )
    p.add_argument("--drivers", type=count, default=2_000, help="default: %(default)s")
    p.add_argument("--zones", type=count, default=64, help="default: %(default)s")
    p.add_argument("--hours", type=count, default=48, help="default: %(default)s")
    p.add_argument("--trips", type=count, default=0, help="ETA labels (default: 500 per hour)")
    p.add_argument(
        "--surge-observations", type=count, default=0, help="pricing labels (default: 300 per hour)"
    )
    p.add_argument("--seed", type=int, default=7, help="default: %(default)s")
    p.add_argument(
        "--end",
        type=timestamp,
        default=None,
        help="end of the window, ISO-8601 (default: now, to 5 minutes, so the data is fresh)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import time

    from serving.progress import Progress
    from serving.sample.world import WorldSpec, generate

    now = datetime.now(UTC).replace(second=0, microsecond=0)
    end = args.end or now.replace(minute=now.minute - now.minute % 5)
    spec = WorldSpec(
        out=args.out,
        drivers=args.drivers,
        zones=args.zones,
        hours=args.hours,
        seed=args.seed,
        end=end,
        trips=args.trips,
        surge_observations=args.surge_observations,
    ).validated()
    started = time.perf_counter()
    with Progress("sample-data", total=spec.expected_rows) as progress:
        counts = generate(spec, progress=lambda table, rows: progress.advance(rows, table))
    elapsed = time.perf_counter() - started
    total = sum(counts.values())
    for table, rows in counts.items():
        print(f"  {table:<20} {rows:>12,} rows  -> {args.out / (table + '.parquet')}")
    print(
        f"sample-data: {total:,} rows in {elapsed:.1f} s "
        f"({total / max(elapsed, 1e-9):,.0f} rows/s), "
        f"window {spec.start:%Y-%m-%d %H:%M} .. {spec.end:%Y-%m-%d %H:%M} UTC"
    )
    return 0
