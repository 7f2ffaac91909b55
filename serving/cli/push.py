"""`carrara push`: rows of a Parquet file to a push source's feature views (as Feast's push)."""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.cli.arguments import Subparsers, future_skew_option, redis_url_option, repo_option

TARGETS = ("online", "offline", "online_and_offline")


def add(commands: Subparsers) -> None:
    p = commands.add_parser(
        "push",
        help="write rows to the feature views of a push source (as Feast's store.push)",
    )
    repo_option(p)
    p.add_argument("--source", required=True, help="the push source's name")
    p.add_argument("--input", type=Path, required=True, help="Parquet file of rows to push")
    p.add_argument(
        "--to", choices=TARGETS, default="online", help="online (default), offline or both"
    )
    future_skew_option(p)
    redis_url_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from serving.ingest.push import PushTarget, push_file

    result = push_file(
        args.repo,
        args.source,
        args.input,
        PushTarget(args.to),
        args.redis_url,
        max_future_skew_s=args.max_future_skew_s,
    )
    target = PushTarget(args.to)
    if target.online:
        print(
            f"push {args.source}: {result.rows_written} rows written, "
            f"{result.rows_older_than_stored} older than stored (not written)"
        )
    if target.offline:
        print(f"push {args.source}: {result.rows_appended} rows appended offline")
    return 0
