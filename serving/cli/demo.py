"""`carrara demo`: the whole loop on a private redis-server, then a clean shut-down."""

from __future__ import annotations

import argparse

from serving.cli.arguments import Subparsers, count, registry_option, repo_option


def add(commands: Subparsers) -> None:
    p = commands.add_parser(
        "demo", help="sample data -> apply -> materialize -> train -> serve -> predict, end to end"
    )
    repo_option(p)
    registry_option(p)
    p.add_argument("--drivers", type=count, default=2_000, help="default: %(default)s")
    p.add_argument("--hours", type=count, default=30, help="default: %(default)s")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from serving.sample.demo import DemoSettings, run_demo

    return run_demo(
        DemoSettings(
            repo=args.repo, registry=args.registry, drivers=args.drivers, hours=args.hours
        ),
    )
