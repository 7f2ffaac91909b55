"""`carrara serve`: the gRPC prediction server, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse

from serving.cli.arguments import (
    Subparsers,
    count,
    redis_url_option,
    registry_option,
    repo_option,
)


def add(commands: Subparsers) -> None:
    p = commands.add_parser("serve", help="serve predictions and online features over gRPC")
    repo_option(p)
    registry_option(p)
    redis_url_option(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    p.add_argument(
        "--port", type=count, default=50051, help="gRPC port, 0 = any (default: %(default)s)"
    )
    p.add_argument("--metrics-port", type=count, default=None, help="Prometheus /metrics port")
    p.add_argument(
        "--max-rows", type=count, default=1_000, help="rows per request (default: %(default)s)"
    )
    p.add_argument(
        "--threads",
        type=count,
        default=2,
        help="RPC threads per process (default: %(default)s; more when Redis is remote)",
    )
    p.add_argument(
        "--processes",
        type=count,
        default=1,
        help="server processes sharing the port; one per core is best (default: %(default)s)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from serving.errors import UsageError
    from serving.online.server import ServerSettings
    from serving.online.supervisor import serve_forever
    from serving.repo.compile import ensure_plan

    if args.processes < 1 or args.threads < 1 or args.max_rows < 1:
        raise UsageError("--processes, --threads and --max-rows must be at least 1")
    settings = ServerSettings(
        repo=args.repo,
        registry=args.registry,
        host=args.host,
        port=args.port,
        redis_url=args.redis_url,
        metrics_port=args.metrics_port,
        max_rows=args.max_rows,
        threads=args.threads,
        reuse_port=args.processes > 1,
    )
    ensure_plan(args.repo)  # compile a missing or stale plan once here, not once per process
    return serve_forever(settings, args.processes)
