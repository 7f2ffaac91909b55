"""`carrara materialize`: Parquet batch sources -> Redis, in Feast's layout and with its rules."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from serving.cli.arguments import (
    Subparsers,
    engine_options,
    ray_address,
    redis_url_option,
    repo_option,
    timestamp,
)


def add(commands: Subparsers) -> None:
    p = commands.add_parser(
        "materialize",
        help="load the latest feature rows of a time window into Redis (as feast materialize)",
    )
    repo_option(p)
    window = p.add_mutually_exclusive_group(required=True)
    window.add_argument("--start", type=timestamp, help="window start, ISO-8601 (naive = UTC)")
    window.add_argument(
        "--incremental",
        action="store_true",
        help="from where the last materialize (carrara's or feast's) ended, per view",
    )
    p.add_argument("--end", type=timestamp, help="window end, ISO-8601 (incremental: now)")
    p.add_argument("--views", type=_names, default=None, help="comma-separated feature views")
    redis_url_option(p)
    engine_options(p)
    p.set_defaults(run=run)


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected view names separated by commas")
    return names


def run(args: argparse.Namespace) -> int:
    from serving.batch.materialize import materialize
    from serving.errors import UsageError

    if args.start is not None and args.end is None:
        raise UsageError("--start needs --end")
    address = ray_address(args)
    engine = None
    if args.engine == "ray":
        from serving.batch.ray_engine.materialize import RayMaterializer

        engine = RayMaterializer(address)
        engine.connect()  # an unreachable cluster fails before the plan is read
    report = materialize(
        args.repo,
        start=args.start,
        end=args.end,
        incremental=args.incremental,
        views=args.views,
        redis_url=args.redis_url,
        on_view=_print_view,
        engine=engine,
    )
    _print_summary(report)
    if engine is not None:
        print(f"materialize: stages on Ray: {engine.stages.describe()}")
    return 0


def _print_view(view: Any) -> None:
    from datetime import UTC

    start, end = view.start.astimezone(UTC), view.end.astimezone(UTC)
    window = f"{start:%Y-%m-%d %H:%M:%S} .. {end:%Y-%m-%d %H:%M:%S} UTC"
    if view.entity_rows == 0:
        print(f"  {view.view:<24} {window}: no rows in the window, nothing written")
        return
    print(
        f"  {view.view:<24} {window}: {view.rows_scanned:,} rows read, "
        f"{view.entity_rows:,} entity rows: {view.written:,} written, "
        f"{view.skipped:,} skipped (not newer than stored), {view.values:,} values, "
        f"{view.elapsed_s:.1f} s"
    )


def _print_summary(report: Any) -> None:
    views = len(report.views)
    for absence in report.absent:
        print(
            f"materialize: {absence.describe()}, yet its recorded interval is up to date "
            "(an empty or new Redis?): rewrite it with --start and --end",
            file=sys.stderr,
        )
    if report.entity_rows == 0:
        print(f"materialize: {views} views, no rows in the window: nothing written")
        return
    rate = report.entity_rows / max(report.elapsed_s, 1e-9)
    print(
        f"materialize: {views} views, {report.entity_rows:,} entity rows "
        f"({report.written:,} written, {report.skipped:,} skipped), {report.values:,} values "
        f"in {report.elapsed_s:.1f} s ({rate:,.0f} entity rows/s)"
    )
