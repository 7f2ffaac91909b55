"""`carrara train KIND`: point-in-time training set, LightGBM, holdout report, registry."""

from __future__ import annotations

import argparse
import contextlib

from serving.cli.arguments import (
    Subparsers,
    engine_options,
    ray_address,
    registry_option,
    repo_option,
    timestamp,
)


def add(commands: Subparsers) -> None:
    p = commands.add_parser(
        "train", help="train a model on Feast point-in-time features and register it"
    )
    p.add_argument("kind", help="a model kind of the repo (its model_kinds.py)")
    repo_option(p)
    registry_option(p)
    p.add_argument("--start", type=timestamp, default=None, help="first label time (ISO-8601)")
    p.add_argument("--end", type=timestamp, default=None, help="label times before this")
    p.add_argument("--seed", type=int, default=7, help="LightGBM seed (default: %(default)s)")
    engine_options(p)  # the point-in-time retrieval runs there; LightGBM runs here
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from serving.cli.card_text import (
        metrics_table,
        rows_text,
        total_rows,
        window_text,
    )
    from serving.models.card import comparison_lines
    from serving.models.registry import ModelRegistry
    from serving.repo.model_kinds import model_kind
    from serving.training.train import train

    spec = model_kind(args.repo, args.kind)  # an unknown kind fails before Feast is imported
    address = ray_address(args)
    with contextlib.ExitStack() as engine:
        if args.engine == "ray":
            from serving.batch.ray_engine.training import RayRetrieval
            from serving.training.training_set import retrieval_engine

            retrieval = RayRetrieval(address)
            engine.enter_context(retrieval_engine(retrieval))
        registry = ModelRegistry(args.registry)
        result = train(spec, args.repo, registry, (args.start, args.end), args.seed)
    card, reg = result.card, result.registration
    print(
        f"train {spec.name}: {total_rows(card) or 0:,} labels, {window_text(card)} "
        f"({rows_text(card)}); retrieval {result.retrieval_s:.1f} s, "
        f"training {result.training_s:.1f} s, {card.best_iteration} trees"
    )
    for line in metrics_table(card):
        print(f"  {line}")
    for baseline in spec.baselines:
        print(f"  {baseline.name}: {baseline.description}")
    for other in spec.compare_with:
        print(f"  {other.feature_service}: the same LightGBM on {other.description}, same rows")
    for line in comparison_lines(
        card, {c.feature_service: c.description for c in spec.compare_with}
    ):
        print(line)
    first = " (first version: production automatically)" if reg.alias == "production" else ""
    print(f"registered {reg.name}:{reg.version} as {reg.name}@{reg.alias}{first} -> {reg.path}")
    if args.engine == "ray":
        print(f"train: retrieval stages on Ray: {retrieval.stages.describe()}")
    return 0
