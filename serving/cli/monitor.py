"""`carrara monitor`: the drift report of a served model, from its prediction log."""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.cli.arguments import Subparsers, registry_option, timestamp


def add(commands: Subparsers) -> None:
    p = commands.add_parser(
        "monitor",
        help="drift report: served feature values (the prediction log) against training",
        description=(
            "Per logged model version and feature: training vs served histogram, PSI "
            "(0.1 warn, 0.2 alert) and missing rates. Writes a self-contained HTML page "
            "with a picture per feature and prints a one-screen summary. With "
            "--baseline-until T the reference is the rows logged before T instead of the "
            "training rows, and the served window the rows from T on: features that move "
            "with the clock (hour of day, a day's running counts) then compare like with like."
        ),
    )
    p.add_argument("--model", required=True, help="model name, as logged (eta)")
    p.add_argument("--log", type=Path, required=True, metavar="DIR", help="the prediction log")
    p.add_argument("--since", type=timestamp, default=None, help="ISO-8601 time (UTC if naive)")
    p.add_argument(
        "--baseline-until",
        type=timestamp,
        default=None,
        metavar="T",
        help="compare the rows logged from T on with those before T (from --since), "
        "not with training",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="the HTML report (default: monitor-MODEL.html in the current folder)",
    )
    registry_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from serving.errors import UsageError
    from serving.models.registry import ModelRegistry
    from serving.monitoring.report import html, log_drift, summary

    registry = ModelRegistry(args.registry)
    reports = log_drift(args.log, args.model, registry, args.since, args.baseline_until)
    out = args.out or Path(f"monitor-{args.model}.html")
    try:
        out.write_text(html(reports), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write the report {out}: {exc.strerror or exc}") from None
    print(summary(reports, str(out)))
    return 0
