"""`carrara evaluate`: live accuracy of a served model, from its prediction log and outcomes."""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.cli.arguments import Subparsers, registry_option, timestamp


def add(commands: Subparsers) -> None:
    p = commands.add_parser(
        "evaluate",
        help="live error per model version and hour: logged predictions joined with outcomes",
        description=(
            "Joins the predictions `carrara serve --prediction-log DIR` logged with an outcomes "
            "file: by request_id (and row) when it has that column, else by the model's join "
            "keys and time (nearest logged prediction within --window-s). Prints MAE and RMSE "
            "(regression) or log loss and AUC (binary) per version and per hour, beside the "
            "holdout metrics of each version's card."
        ),
    )
    p.add_argument("--model", required=True, help="model name, as logged (eta)")
    p.add_argument("--log", type=Path, required=True, metavar="DIR", help="the prediction log")
    p.add_argument(
        "--outcomes",
        type=Path,
        required=True,
        metavar="FILE",
        help="Parquet: the label, and request_id [row] or the join keys and a time column",
    )
    p.add_argument("--since", type=timestamp, default=None, help="ISO-8601 time (UTC if naive)")
    p.add_argument("--label", default=None, help="the outcome column (default: the card's label)")
    p.add_argument(
        "--time-column",
        default="event_timestamp",
        help="the outcomes' time column, for a join without request_id (default: %(default)s)",
    )
    p.add_argument(
        "--window-s",
        type=float,
        default=900.0,
        help="largest gap between a prediction and its outcome's time (default: %(default)s)",
    )
    registry_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from serving.errors import UsageError
    from serving.models.registry import ModelRegistry
    from serving.monitoring.evaluate import OutcomeSpec, evaluate, render

    if args.window_s <= 0:
        raise UsageError("--window-s must be above 0")
    spec = OutcomeSpec(
        args.outcomes, args.label, args.time_column, timedelta(seconds=args.window_s)
    )
    result = evaluate(args.log, args.model, spec, ModelRegistry(args.registry), args.since)
    print(render(result))
    return 0
