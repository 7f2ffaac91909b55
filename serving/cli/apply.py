"""`carrara apply`: Feast's apply on the repo, then the serving plan beside its registry."""

from __future__ import annotations

import argparse
import sys

from serving.cli.arguments import Subparsers, repo_option


def add(commands: Subparsers) -> None:
    p = commands.add_parser("apply", help="run Feast apply and compile the serving plan")
    repo_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from serving.repo.compile import apply_repo

    plan = apply_repo(args.repo)
    print(
        f"apply: {len(plan.feature_views)} feature views, {len(plan.on_demand_views)} on-demand "
        f"views, {len(plan.feature_services)} feature services -> {plan.path}"
    )
    for record in plan.unsupported:  # the plan compiled the rest; a command needing it refuses
        print(f"apply: warning: {record.describe()}", file=sys.stderr)
    return 0
