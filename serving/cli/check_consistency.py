"""`carrara check-consistency`: a running server's vectors against point-in-time ones."""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.cli.arguments import (
    Subparsers,
    client_credentials,
    client_security_options,
    count,
    registry_option,
    repo_option,
)


def add(commands: Subparsers) -> None:
    p = commands.add_parser(
        "check-consistency",
        help="compare a running server's feature vectors with offline point-in-time ones",
        description=(
            "For sampled entity rows, ask the server (Predict with return_features) and "
            "compute the offline point-in-time vector and prediction of the same model "
            "version at the same time; print every difference, exit 1 if there is any. "
            "Materializes nothing."
        ),
    )
    p.add_argument("--model", required=True, help='"eta" (= eta@production), "eta@alias", "eta:3"')
    p.add_argument(
        "--target", default="127.0.0.1:50051", help="server address (default: %(default)s)"
    )
    p.add_argument("--sample", type=count, default=200, help="rows (default: %(default)s)")
    p.add_argument(
        "--input",
        type=Path,
        default=None,
        help="Parquet file of entity rows to sample (default: the model's label table)",
    )
    repo_option(p)
    registry_option(p)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument(
        "--batch-rows", type=count, default=50, help="rows per request (default: %(default)s)"
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    client_security_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # one line per failure, as in `predict`
    from serving.batch.consistency import ConsistencyRequest, check_consistency, describe

    report = check_consistency(
        ConsistencyRequest(
            repo=args.repo,
            registry=args.registry,
            model=args.model,
            target=args.target,
            sample=args.sample,
            input=args.input,
            seed=args.seed,
            batch_rows=max(1, args.batch_rows),
            timeout_s=args.timeout,
            credentials=client_credentials(args),
        )
    )
    for line in describe(report):
        print(line)
    return 0 if report.consistent else 1
