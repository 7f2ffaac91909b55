"""The `carrara` command: parse arguments, run one command, turn domain errors into one line.

Start-up must stay fast (`carrara --help` in well under a second), so this module and the
command modules import only the standard library at the top; each command imports its
machinery when it runs. Only `apply` and `train` import Feast, and any other command only
when it finds the serving plan missing or stale and compiles it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from serving.cli import (
    apply,
    check_consistency,
    demo,
    evaluate,
    ingest,
    materialize,
    models,
    monitor,
    predict,
    push,
    sample_data,
    score,
    serve,
    train,
)

COMMANDS: tuple[ModuleType, ...] = (
    sample_data,
    apply,
    materialize,
    train,
    models,
    serve,
    predict,
    push,
    ingest,
    score,
    check_consistency,
    evaluate,
    monitor,
    demo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carrara",
        description="Feature store and LightGBM prediction server on Feast's Redis layout.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    from serving.errors import CarraraError, UsageError

    try:
        return int(args.run(args))
    except UsageError as exc:
        print(f"carrara {args.command}: {exc}", file=sys.stderr)
        return 2
    except CarraraError as exc:
        print(f"carrara {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"carrara {args.command}: interrupted", file=sys.stderr)
        return 130
