"""`carrara ingest`: rows from a Redis Stream, pushed as they arrive (consumer group)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
from typing import Any

from serving.cli.arguments import (
    Subparsers,
    future_skew_option,
    redis_url_option,
    repo_option,
)


def add(commands: Subparsers) -> None:
    p = commands.add_parser(
        "ingest",
        help="consume a Redis Stream of push-source rows into the online store",
    )
    repo_option(p)
    p.add_argument("--stream", required=True, help="the Redis Stream's key")
    p.add_argument("--group", default="carrara", help="consumer group (default: carrara)")
    p.add_argument(
        "--consumer",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="this ingester's name in the group (reuse it to resume its pending entries)",
    )
    p.add_argument("--source", default=None, help="push source of entries naming none")
    p.add_argument("--batch", type=int, default=500, help="entries per read (default 500)")
    p.add_argument(
        "--claim-idle-ms",
        type=int,
        default=30_000,
        help="take over entries another ingester left pending this long (default 30000)",
    )
    p.add_argument("--max-events", type=int, default=None, help="stop after this many entries")
    p.add_argument("--idle-exit", action="store_true", help="stop when nothing is new or pending")
    p.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port"
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="their address (127.0.0.1)")
    future_skew_option(p)
    redis_url_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from serving.ingest.stream import ingest

    ingester = ingest(
        args.repo,
        args.stream,
        args.redis_url,
        group=args.group,
        consumer=args.consumer,
        source=args.source,
        batch=args.batch,
        claim_idle_ms=args.claim_idle_ms,
    )
    ingester.pusher.max_future_skew_s = args.max_future_skew_s

    if args.metrics_port is not None:
        from serving.errors import UsageError
        from serving.ingest.metrics import IngestMetrics

        ingester.metrics = IngestMetrics(args.stream)
        try:
            port = ingester.metrics.serve(args.metrics_host, args.metrics_port)
        except OSError as exc:
            raise UsageError(
                f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: "
                f"{exc.strerror or exc}"
            ) from None
        print(f"ingest {args.stream}: metrics on http://{args.metrics_host}:{port}/metrics")

    def stop(_signum: int, _frame: Any) -> None:
        ingester.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        stats = ingester.run(args.max_events, args.idle_exit)
    finally:
        if ingester.pusher.store is not None:
            ingester.pusher.store.close()
        if ingester.metrics is not None:
            ingester.metrics.close()
    print(
        f"ingest {args.stream}: {stats.events} entries, {stats.written} rows written, "
        f"{stats.older_than_stored} older than stored, {stats.dead} to {ingester.dead_stream}"
    )
    return 0
