"""Model kinds: what a feature repository's models learn, defined in the repository itself.

A repository declares its kinds in `model_kinds.py` beside its feature definitions, as
`MODEL_KINDS = {name: ModelKind(...)}`: the feature service, the label table (a Parquet file,
relative to the repo) and its label column, the naive baselines a trained model must beat,
and the feature services it is compared with (`compare_with`: the same learner trained on
another service over the same label rows, e.g. the service a new one replaces).
Adding a kind changes the repository, never `serving/`. The module is plain Python (numpy,
pandas); list it in `.feastignore` so that Feast's repository scan skips it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.errors import PlanError, UsageError
from serving.repo.on_demand import import_repo_module

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd  # type: ignore[import-untyped]

MODULE = "model_kinds"


@dataclass(frozen=True)
class Baseline:
    name: str
    description: str
    predict: Callable[[pd.DataFrame], np.ndarray[Any, Any]]  # NaN where it has no answer


@dataclass(frozen=True)
class Comparison:
    """Another feature service the kind's learner is also trained on, over the same rows and
    split, so the card shows what the kind's own service adds (or costs)."""

    feature_service: str
    description: str  # what it holds, in words: "batch features only"


@dataclass(frozen=True)
class ModelKind:
    name: str
    feature_service: str
    label_table: str  # relative to the repo
    label: str
    baselines: tuple[Baseline, ...] = ()
    compare_with: tuple[Comparison, ...] = ()


def model_kinds(repo: Path) -> Mapping[str, ModelKind]:
    """The repository's kinds by name; a clear error when it declares none or bad ones."""
    if not (repo / f"{MODULE}.py").exists():
        raise UsageError(f"{repo} declares no model kinds ({repo / MODULE}.py is missing)")
    try:
        module = import_repo_module(MODULE, repo)
    except PlanError as exc:
        raise UsageError(str(exc)) from None
    kinds = getattr(module, "MODEL_KINDS", None)
    if not isinstance(kinds, Mapping) or not all(
        isinstance(kind, ModelKind) and kind.name == name for name, kind in kinds.items()
    ):
        raise UsageError(
            f"{repo / MODULE}.py must define MODEL_KINDS = {{name: ModelKind(name=name, ...)}}"
        )
    for kind in kinds.values():
        _check_comparisons(repo, kind)
    return kinds


def _check_comparisons(repo: Path, kind: ModelKind) -> None:
    compared = kind.compare_with if isinstance(kind.compare_with, tuple) else ()
    services = [c.feature_service for c in compared if isinstance(c, Comparison)]
    if len(services) != len(kind.compare_with) or len(set(services)) != len(services):
        raise UsageError(
            f"{repo / MODULE}.py: kind {kind.name!r} compare_with must be Comparison(...)s "
            "naming each feature service once"
        )


def model_kind(repo: Path, name: str) -> ModelKind:
    kinds = model_kinds(repo)
    if name not in kinds:
        raise UsageError(
            f"unknown model kind {name!r} (known: {', '.join(sorted(kinds))}) in {repo / MODULE}.py"
        )
    return kinds[name]
