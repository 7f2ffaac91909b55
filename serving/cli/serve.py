"""`carrara serve`: the gRPC prediction server, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.cli.arguments import (
    Subparsers,
    count,
    future_skew_option,
    redis_url_option,
    registry_option,
    repo_option,
)

DRIFT_WINDOW_ROWS = 10_000  # with a prediction log: ~1 minute of traffic at 200 calls/s


def add(commands: Subparsers) -> None:
    p = commands.add_parser("serve", help="serve predictions and online features over gRPC")
    repo_option(p)
    registry_option(p)
    redis_url_option(p)
    future_skew_option(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    p.add_argument(
        "--port", type=count, default=50051, help="gRPC port, 0 = any (default: %(default)s)"
    )
    p.add_argument("--metrics-port", type=count, default=None, help="Prometheus /metrics port")
    p.add_argument(
        "--metrics-host",
        default=None,
        help="bind address of /metrics, plain HTTP (default: --host)",
    )
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
    security = p.add_argument_group("security (secrets are read from files, never argv)")
    security.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="server certificate chain (PEM): serve TLS"
    )
    security.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    security.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="FILE",
        help="CA (PEM) whose certificates clients must present (mutual TLS)",
    )
    security.add_argument(
        "--auth-tokens",
        type=Path,
        metavar="FILE",
        help="bearer tokens, one a line, each optionally followed by the models it may call; "
        "re-read on change; health stays open",
    )
    security.add_argument(
        "--no-reflection",
        dest="reflection",
        action="store_false",
        help="do not serve gRPC server reflection",
    )
    p.add_argument(
        "--feature-cache-entries",
        type=count,
        default=0,
        metavar="N",
        help="cache up to N Redis keys in process, kept coherent by Redis's invalidations "
        "(CLIENT TRACKING); 0 = off (default)",
    )
    watch = p.add_argument_group("watching what is served")
    watch.add_argument(
        "--prediction-log",
        type=Path,
        metavar="DIR",
        help="log every scored row to hourly Parquet files under DIR "
        "(DIR/model=M/date=D/hour=H/part-*.parquet); written off the request path",
    )
    watch.add_argument(
        "--log-sample-rate",
        type=float,
        default=1.0,
        metavar="R",
        help="share of Predict calls logged (and fed to drift), above 0 and at most 1 "
        "(default: %(default)s)",
    )
    watch.add_argument(
        "--log-retention-hours",
        type=float,
        default=None,
        metavar="H",
        help="delete the log's hour partitions older than H hours (default: keep all)",
    )
    watch.add_argument(
        "--drift-window",
        type=count,
        default=None,
        metavar="ROWS",
        help="served rows per model version kept for the PSI gauges on /metrics; 0 = off "
        f"(default: {DRIFT_WINDOW_ROWS:,} with --prediction-log, else off)",
    )
    degraded = p.add_argument_group("when the online store is down or slow")
    degraded.add_argument(
        "--score-without-store",
        action="append",
        default=[],
        metavar="MODEL",
        help="score MODEL with its stored features missing (reply: degraded) instead of "
        "failing UNAVAILABLE; repeatable",
    )
    degraded.add_argument(
        "--store-budget-ms",
        type=float,
        default=None,
        help="for those models: the online store's time budget per call",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from serving.credentials import TLSFiles
    from serving.errors import UsageError
    from serving.online.server import ServerSettings, check_security
    from serving.online.supervisor import serve_forever
    from serving.repo.compile import ensure_plan

    if args.processes < 1 or args.threads < 1 or args.max_rows < 1:
        raise UsageError("--processes, --threads and --max-rows must be at least 1")
    if args.metrics_host is not None and args.metrics_port is None:
        raise UsageError("--metrics-host needs --metrics-port")
    tls = (
        TLSFiles(cert=args.tls_cert, key=args.tls_key, ca=args.tls_client_ca)
        if args.tls_cert or args.tls_key or args.tls_client_ca
        else None
    )
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
        tls=tls,
        auth_tokens=args.auth_tokens,
        reflection=args.reflection,
        metrics_host=args.metrics_host,
        score_without_store=frozenset(args.score_without_store),
        store_budget_ms=args.store_budget_ms,
        feature_cache_entries=args.feature_cache_entries,
        max_future_skew_s=args.max_future_skew_s,
        prediction_log=args.prediction_log,
        log_sample_rate=args.log_sample_rate,
        log_retention_hours=args.log_retention_hours,
        drift_window_rows=DRIFT_WINDOW_ROWS
        if args.drift_window is None and args.prediction_log is not None
        else args.drift_window or 0,
    )
    if not 0 < args.log_sample_rate <= 1:
        raise UsageError("--log-sample-rate must be above 0 and at most 1")
    if args.log_retention_hours is not None and args.log_retention_hours <= 0:
        raise UsageError("--log-retention-hours must be above 0")
    if args.prediction_log is not None:
        from serving.monitoring.parquet_log import check_writable

        check_writable(args.prediction_log)  # one line now, not one per server process
    if args.store_budget_ms is not None and not (0 < args.store_budget_ms <= 60_000):
        raise UsageError("--store-budget-ms must be above 0 and at most 60000")
    check_security(settings)  # a bad file is one line now, not one per server process
    ensure_plan(args.repo)  # compile a missing or stale plan once here, not once per process
    return serve_forever(settings, args.processes)
