"""`carrara score`: batch-score a Parquet file of requests with point-in-time features."""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.cli.arguments import (
    Subparsers,
    engine_options,
    positive,
    ray_address,
    redis_url_option,
    registry_option,
    repo_option,
)


def add(commands: Subparsers) -> None:
    p = commands.add_parser(
        "score",
        help="score a Parquet file of requests, each row with features as of its own time",
        description=(
            "Each input row carries its entity keys, request data and an event timestamp; "
            "features are joined point in time from the offline store (or, with --online, "
            "read as of now from Redis) and scored as the server scores. The output holds "
            "the input columns plus prediction, model_version and missing_features."
        ),
    )
    p.add_argument("--model", required=True, help='"eta" (= eta@production), "eta@alias", "eta:3"')
    p.add_argument(
        "--input",
        type=Path,
        required=True,
        help="Parquet file of request rows (--engine ray: or a folder of them)",
    )
    p.add_argument("--output", type=Path, required=True, help="Parquet file to write")
    repo_option(p)
    registry_option(p)
    p.add_argument(
        "--online",
        action="store_true",
        help="features as of now from Redis (a backfill of the live view), not point in time",
    )
    redis_url_option(p)
    p.add_argument(
        "--timestamp-column",
        default="event_timestamp",
        help="the input's event-time column (default: %(default)s)",
    )
    p.add_argument("--chunk-rows", type=positive, default=None, help="rows per chunk")
    p.add_argument("--threads", type=positive, default=None, help="LightGBM threads (all cores)")
    engine_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from serving.batch.score import ScoreRequest, score_file

    address = ray_address(args)
    request = ScoreRequest(
        repo=args.repo,
        registry=args.registry,
        model=args.model,
        input=args.input,
        output=args.output,
        online=args.online,
        redis_url=args.redis_url,
        timestamp_column=args.timestamp_column,
        chunk_rows=args.chunk_rows,
        threads=args.threads,
    )
    if args.engine == "ray":
        from serving.batch.ray_engine.score import RayScorer

        engine = RayScorer(address)
        report = engine.score(request)
    else:
        report = score_file(request)
    mode = "online, as of now" if args.online else "point in time"
    print(
        f"score {report.model}:{report.version} ({mode}): {report.rows:,} rows in "
        f"{report.elapsed_s:.1f} s ({report.rows_per_s:,.0f} rows/s), "
        f"{report.rows_with_missing:,} with missing features -> {report.output}"
    )
    if args.engine == "ray":
        print(f"score: stages on Ray: {engine.stages.describe()}")
    return 0
