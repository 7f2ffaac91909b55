"""`carrara models list|show|promote|rollback|register`: the model registry on the command line."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from serving.cli.arguments import Subparsers, registry_option, repo_option
from serving.cli.card_text import (
    metrics_table,
    rows_text,
    scorer_text,
    total_rows,
    window_text,
)

if TYPE_CHECKING:
    from serving.models.registry import ModelRegistry
    from serving.repo.plan import Column


def add(commands: Subparsers) -> None:
    p = commands.add_parser("models", help="list, show, promote and roll back model versions")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="every model, version and alias")
    show = actions.add_parser("show", help="one version's metadata")
    show.add_argument("ref", metavar="NAME[:VERSION|@ALIAS]")
    promote = actions.add_parser("promote", help="point an alias at a version")
    promote.add_argument("ref", metavar="NAME:VERSION")
    promote.add_argument(
        "--alias",
        required=True,
        help="production, staging, canary (answers --share of production's traffic) or shadow "
        "(scored beside production, never answers)",
    )
    promote.add_argument(
        "--share", type=float, default=None, help="canary/shadow: the part of traffic (0-1)"
    )
    promote.add_argument(
        "--sticky-key",
        default=None,
        help="canary: the entity key that picks the version (one entity, one version)",
    )
    rollback = actions.add_parser("rollback", help="point an alias back at its previous version")
    rollback.add_argument("name", metavar="NAME")
    rollback.add_argument("--alias", required=True, help="production or staging")
    register = actions.add_parser(
        "register", help="register a LightGBM text model trained elsewhere"
    )
    register.add_argument("name", metavar="NAME")
    register.add_argument("--model-file", type=Path, required=True, help="LightGBM's model.txt")
    register.add_argument(
        "--feature-service", required=True, help="its features' service; names must match"
    )
    register.add_argument("--holdout", type=Path, help="a label table (Parquet) to score")
    register.add_argument("--label", help="the label column of --holdout")
    register.add_argument(
        "--levels", type=Path, help="JSON {ref: [level, ...]} for String features"
    )
    repo_option(register)
    for sub in (listing, show, promote, rollback, register):
        registry_option(sub)
        sub.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from serving.models.registry import ModelRegistry

    registry = ModelRegistry(args.registry)
    if args.action == "list":
        return _list(registry)
    if args.action == "show":
        return _show(registry, args.ref)
    if args.action == "promote":
        return _promote(registry, args)
    if args.action == "register":
        return _register(registry, args)
    change = registry.rollback(args.name, args.alias)
    print(f"rolled back {change.name}@{change.alias}: version {change.before} -> {change.after}")
    return 0


def _list(registry: ModelRegistry) -> int:
    models = registry.list()
    if not models:
        print(f"no models in {registry.root}")
    for model in models:
        print(
            f"{model.name}" + (f"  (aliases unreadable: {model.problem})" if model.problem else "")
        )
        by_version: dict[int, list[str]] = {}
        for alias, version in sorted(model.aliases.items()):
            by_version.setdefault(version, []).append(alias)
        for info in model.versions:
            tags = ",".join(by_version.get(info.version, []))
            if info.card is None:
                print(f"  {info.version:>4}  BROKEN  {info.problem}")
                continue
            card = info.card
            mae = f"{card.metrics.model.mae:.4g}" if card.metrics else "-"
            rows = total_rows(card)
            print(
                f"  {info.version:>4}  {tags or '-':<18} {card.created_at:%Y-%m-%d %H:%M} "
                f"{card.feature_service:<12} holdout MAE {mae}  "
                f"rows {'-' if rows is None else f'{rows:,}'}"
            )
    return 0


def _show(registry: ModelRegistry, ref: str) -> int:
    name, version = registry.resolve(ref)
    card = registry.card(f"{name}:{version}")
    aliases = [a for a, v in sorted(registry.aliases(name).items()) if v == version]
    print(f"{name}:{version}" + (f"  ({', '.join(aliases)})" if aliases else ""))
    print(f"  feature service  {card.feature_service}  (label {card.label})")
    print(f"  window           {window_text(card)}")
    print(f"  rows             {rows_text(card)}; {card.best_iteration} trees")
    print(f"  entities         {_inputs(card.entities)}")
    print(f"  request fields   {_inputs(card.request_fields)}")
    print(f"  features ({len(card.feature_refs)})    {', '.join(card.feature_refs)}")
    for ref_, levels in card.categorical_levels.items():
        print(f"  categorical      {ref_}: {', '.join(levels)}")
    print(f"  scorer           {scorer_text(card)}")
    print(f"  data fingerprint {card.data_fingerprint}")
    print(f"  libraries        {', '.join(f'{k} {v}' for k, v in card.library_versions.items())}")
    print(f"  git revision     {card.git_revision or 'unknown'}")
    print(f"  created          {card.created_at.isoformat(timespec='seconds')}")
    for line in metrics_table(card):
        print(f"  {line}")
    return 0


def _inputs(columns: tuple[Column, ...]) -> str:
    return ", ".join(f"{c.name} ({c.dtype})" for c in columns) or "none"


def _register(registry: ModelRegistry, args: argparse.Namespace) -> int:
    from serving.training.external import ExternalModel, register_external

    model = ExternalModel(
        name=args.name,
        model_file=args.model_file,
        feature_service=args.feature_service,
        holdout=args.holdout,
        label=args.label,
        levels_file=args.levels,
    )
    reg, card = register_external(args.repo, registry, model)
    print(
        f"registered {reg.name}:{reg.version} as {reg.name}@{reg.alias} -> {reg.path} "
        f"({len(card.feature_refs)} features of {card.feature_service})"
    )
    for line in metrics_table(card):
        print(f"  {line}")
    return 0


def _promote(registry: ModelRegistry, args: argparse.Namespace) -> int:
    from serving.errors import UsageError

    name, sep, version = args.ref.partition(":")
    if not sep or not version.isdigit():
        raise UsageError(f"promote takes NAME:VERSION, not {args.ref!r}")
    change = registry.promote(name, int(version), args.alias, args.share, args.sticky_key)
    before = f"version {change.before}" if change.before is not None else "nothing"
    print(f"promoted {change.name}:{change.after} to {change.alias} (was {before})")
    traffic = registry.traffic(name).get(change.alias)
    if traffic is not None:
        sticky = f", sticky by {traffic.key}" if traffic.key else ""
        role = "answers" if change.alias == "canary" else "scores in the shadow of"
        print(f"{change.alias} {role} {traffic.share:.0%} of {name}'s production traffic{sticky}")
    return 0
