"""Registering a LightGBM model trained elsewhere (a notebook, a pipeline): checked, then carded.

A text model is accepted when LightGBM parses it (in a child process first: a malformed text
must not abort this one), when its feature names are, in its own input order, features of the
feature service (Feast's full names, `projection__feature`, on-demand outputs included), and
when every String feature comes with its levels (the code LightGBM saw is the level's index).
With a holdout table (labels with the service's inputs and `event_timestamp`), the card gets
the model's holdout error, features joined point in time as in training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from serving.errors import CarraraError, DataError, UsageError, echo
from serving.models.card import CATEGORICAL_DTYPES, HoldoutMetrics, ModelCard, model_inputs
from serving.models.model_text import check_parses
from serving.models.registry import ModelRegistry, Registration
from serving.monitoring.drift import training_distributions
from serving.repo.plan import ServingPlan
from serving.training.train import feature_matrix, library_versions, metrics
from serving.training.training_set import join_features, load_labels

SHOWN_REFS = 12  # of the service's refs, in an error message


@dataclass(frozen=True)
class ExternalModel:
    name: str
    model_file: Path
    feature_service: str
    holdout: Path | None = None
    label: str | None = None
    levels_file: Path | None = None


def register_external(
    repo: Path, registry: ModelRegistry, model: ExternalModel
) -> tuple[Registration, ModelCard]:
    from serving.repo.compile import ensure_plan

    if (model.holdout is None) != (model.label is None):
        raise UsageError("--holdout and --label go together")
    text = _read(model.model_file)
    check_parses(text, str(model.model_file))
    import lightgbm

    booster = lightgbm.Booster(model_str=text)
    plan = ensure_plan(repo)
    refs = tuple(booster.feature_name())
    _check_refs(plan, model.feature_service, refs)
    entities, requests, types = model_inputs(plan, model.feature_service, refs)
    levels = _levels(model.levels_file, {r for r in refs if types[r] in CATEGORICAL_DTYPES})
    card = ModelCard(
        name=model.name,
        version=0,  # allocated by the registry
        feature_service=model.feature_service,
        label=model.label or "",
        feature_refs=refs,
        feature_types=types,
        categorical_levels=levels,
        entities=entities,
        request_fields=requests,
        window=None,
        rows=None,
        metrics=None,
        data_fingerprint="",
        model_sha256="",  # computed by the registry from the text it writes
        registry_fingerprint=plan.registry_fingerprint,
        params={},
        best_iteration=booster.current_iteration(),
        library_versions=library_versions(),
        git_revision=None,
        created_at=datetime.now(UTC),
    )
    if model.holdout is not None and model.label is not None:
        holdout_metrics, x = _holdout(repo, plan, card, booster, model.holdout)
        # the training rows are not here: the holdout's stand in as drift's reference
        distributions = training_distributions(x, refs, levels)
        card = replace(card, metrics=holdout_metrics, training_distributions=distributions)
    registration = registry.register(text, card)
    return registration, registry.card(f"{registration.name}:{registration.version}")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the model file {path}: {exc}") from exc


def _check_refs(plan: ServingPlan, service: str, refs: tuple[str, ...]) -> None:
    """Every model feature names a feature of the service; the first that does not is named."""
    known = _service_refs(plan, service)
    for position, ref in enumerate(refs):
        if ref not in known:
            listed = ", ".join(sorted(known)[:SHOWN_REFS]) + (
                ", ..." if len(known) > SHOWN_REFS else ""
            )
            raise UsageError(
                f"model feature {position} is {echo(ref)}, which is no feature of feature service "
                f"{service!r} (its features, named as the model must name them: {listed})"
            )


def _service_refs(plan: ServingPlan, service: str) -> set[str]:
    try:
        projections = plan.feature_service(service).projections
    except CarraraError as exc:
        raise UsageError(str(exc)) from None
    refs: set[str] = set()
    for p in projections:
        if p.view in plan.feature_views:
            refs.update(f"{p.name}__{f}" for f in p.features)
        elif p.view in plan.on_demand_views:
            outputs = [c.name for c in plan.on_demand_views[p.view].outputs]
            refs.update(f"{p.name}__{f}" for f in (p.features or outputs))
    return refs


def _levels(path: Path | None, needed: set[str]) -> dict[str, tuple[str, ...]]:
    """The levels of each String feature, from a JSON file {ref: [level, ...]}."""
    if not needed:
        return {}
    if path is None:
        raise UsageError(
            f"String features {sorted(needed)} need their levels: give --levels FILE.json "
            "({ref: [level0, level1, ...]}, a level's code being its index, as the model saw it)"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read levels from {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in data.values()
    ):
        raise UsageError(f"{path} must hold an object of string lists ({{ref: [level, ...]}})")
    missing = sorted(needed - set(data))
    if missing:
        raise UsageError(f"{path} has no levels for {missing}")
    return {ref: tuple(data[ref]) for ref in sorted(needed)}


def _holdout(
    repo: Path, plan: ServingPlan, card: ModelCard, booster: object, path: Path
) -> tuple[HoldoutMetrics, np.ndarray]:
    """The model's error on the holdout table, and its feature matrix."""
    labels = load_labels(plan, card.feature_service, path, card.label, (None, None))
    data = join_features(repo, plan, labels)
    data = replace(data, feature_refs=card.feature_refs)  # the model's order, not the service's
    x = feature_matrix(data, dict(card.categorical_levels))
    truth = data.frame[card.label].to_numpy(np.float64)
    if not len(truth):
        raise DataError(f"holdout table {path} has no rows")
    predicted = np.asarray(booster.predict(x), dtype=np.float64)  # type: ignore[attr-defined]
    return HoldoutMetrics(rows=len(truth), model=metrics(truth, predicted), baselines={}), x
