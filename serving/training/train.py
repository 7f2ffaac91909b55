"""Training: point-in-time training set -> time split -> LightGBM -> holdout report -> registry.

A `ModelKind` (defined by the feature repo, see serving/repo/model_kinds.py) names what a model
learns: its feature service, its label table and column, and the naive baselines it must beat.
Training is deterministic for a given training set and
seed (LightGBM `deterministic`, fixed threads, row-wise histograms).

Invariants: the split is by label time, never random: train < validation < holdout, the
holdout being the latest slice, so the holdout measures the future the model will serve.
Categorical (String) features are encoded as their index in levels fixed from the training
slice (sorted); an unseen level is NaN, exactly as the server encodes it from the card.
Baselines that lack an input on a row fall back to the training label mean, stated in the
baseline's description. A kind's `compare_with` services are retrieved for the very same label
rows and fitted by the same learner (same split, params and seed), so the card's comparison
isolates what the kind's own service adds.
"""

from __future__ import annotations

import platform
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from serving.errors import DataError
from serving.models.card import (
    CATEGORICAL_DTYPES,
    NUMERIC_DTYPES,
    ErrorMetrics,
    HoldoutMetrics,
    ModelCard,
    RowCounts,
    TrainingWindow,
    category_codes,
)
from serving.models.registry import ModelRegistry, Registration
from serving.monitoring.drift import training_distributions
from serving.progress import Progress
from serving.repo.historical import TIMESTAMP
from serving.repo.model_kinds import ModelKind
from serving.repo.plan import ServingPlan
from serving.training.training_set import LabelSet, TrainingSet, join_features, load_labels

HOLDOUT_FRACTION = 0.2
VALIDATION_FRACTION = 0.15
MIN_SLICE_ROWS = 30
MAX_ROUNDS = 2_000
EARLY_STOPPING_ROUNDS = 50
LIBRARIES = ("lightgbm", "numpy", "pandas", "pyarrow", "feast")


def _column(frame: pd.DataFrame, ref: str) -> np.ndarray:
    values: np.ndarray = frame[ref].to_numpy(np.float64, na_value=np.nan)
    return values


def lightgbm_params(seed: int) -> dict[str, Any]:
    return {
        "objective": "regression",
        "metric": "l2",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 20,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.9,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "seed": seed,
        "num_threads": 2,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }


@dataclass(frozen=True)
class TrainResult:
    registration: Registration
    card: ModelCard
    retrieval_s: float
    training_s: float


def train(
    spec: ModelKind,
    repo: Path,
    registry: ModelRegistry,
    window: tuple[datetime | None, datetime | None] = (None, None),
    seed: int = 7,
) -> TrainResult:
    """Build the training set, fit, evaluate against the baselines and register."""
    from serving.repo.compile import ensure_plan

    plan = ensure_plan(repo)
    services = (spec.feature_service, *(c.feature_service for c in spec.compare_with))
    label_sets = [  # every service checked before the first (slow) retrieval
        load_labels(plan, service, repo / spec.label_table, spec.label, window)
        for service in dict.fromkeys(services)
    ]
    started = time.perf_counter()
    retrieved_sets = {labels.service: _retrieve(repo, plan, labels) for labels in label_sets}
    retrieved = time.perf_counter()
    data = retrieved_sets[spec.feature_service]
    compared = {c.feature_service: retrieved_sets[c.feature_service] for c in spec.compare_with}
    card, text = fit_and_describe(spec, data, seed, compared)
    trained = time.perf_counter()
    card = replace(
        card,
        registry_fingerprint=plan.registry_fingerprint,
        git_revision=git_revision(repo),
    )
    registration = registry.register(text, card)
    return TrainResult(
        registration=registration,
        card=registry.card(f"{spec.name}:{registration.version}"),
        retrieval_s=retrieved - started,
        training_s=trained - retrieved,
    )


def _retrieve(repo: Path, plan: ServingPlan, labels: LabelSet) -> TrainingSet:
    with Progress(f"retrieval {labels.service}", total=len(labels.frame)) as bar:
        return join_features(repo, plan, labels, progress=bar.advance)


def fit_and_describe(
    spec: ModelKind,
    data: TrainingSet,
    seed: int,
    compared: Mapping[str, TrainingSet] | None = None,
) -> tuple[ModelCard, str]:
    """Split, fit and evaluate; the card (version and checksums left to the registry) and
    LightGBM's text model, cut at the best iteration. `compared`: the training sets of the
    kind's `compare_with` services (by name), over the same label rows as `data`."""
    train_idx, valid_idx, holdout_idx = split_by_time(data.frame[TIMESTAMP])
    levels = categorical_levels(data, train_idx)
    x = feature_matrix(data, levels)
    y = data.frame[spec.label].to_numpy(np.float64)
    booster = fit(data, levels, x, y, (train_idx, valid_idx), seed)
    holdout = evaluate(spec, booster, data.frame.iloc[holdout_idx], x[holdout_idx], y, train_idx)
    others = compared or {}
    comparisons = {
        c.feature_service: compare(c.feature_service, data, others[c.feature_service], y, seed)
        for c in spec.compare_with
    }
    card = ModelCard(
        name=spec.name,
        version=0,  # allocated by the registry
        feature_service=spec.feature_service,
        label=spec.label,
        feature_refs=data.feature_refs,
        feature_types=data.feature_types,
        categorical_levels=levels,
        entities=data.entities,
        request_fields=data.request_fields,
        window=_window(data.frame[TIMESTAMP], holdout_idx),
        rows=RowCounts(len(train_idx), len(valid_idx), len(holdout_idx)),
        metrics=replace(holdout, comparisons=comparisons),
        data_fingerprint=data.fingerprint,
        model_sha256="",  # computed by the registry from the text it writes
        registry_fingerprint="",
        params=lightgbm_params(seed),
        best_iteration=booster.best_iteration,
        library_versions=library_versions(),
        git_revision=None,
        created_at=datetime.now(UTC),
        # the reference for drift: what the model learnt from (serving/monitoring/drift.py)
        training_distributions=training_distributions(x[train_idx], data.feature_refs, levels),
    )
    return card, booster.model_to_string(num_iteration=booster.best_iteration)


def split_by_time(timestamps: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indexes of train, validation and holdout; rows sharing a time share a slice."""
    n = len(timestamps)
    ts = timestamps.to_numpy()
    holdout_start = ts[int(n * (1 - HOLDOUT_FRACTION))]
    valid_start = ts[int(n * (1 - HOLDOUT_FRACTION - VALIDATION_FRACTION))]
    rows = np.arange(n)
    slices = (
        rows[ts < valid_start],
        rows[(ts >= valid_start) & (ts < holdout_start)],
        rows[ts >= holdout_start],
    )
    if min(len(s) for s in slices) < MIN_SLICE_ROWS:
        raise DataError(
            f"{n} labelled rows split by time into {', '.join(str(len(s)) for s in slices)} "
            f"(train, validation, holdout); each needs at least {MIN_SLICE_ROWS}: widen the window"
        )
    return slices


def categorical_levels(data: TrainingSet, train_idx: np.ndarray) -> dict[str, tuple[str, ...]]:
    levels = {}
    for ref in data.feature_refs:
        dtype = data.feature_types[ref]
        if dtype in CATEGORICAL_DTYPES:
            values = data.frame[ref].iloc[train_idx]
            levels[ref] = tuple(sorted({v for v in values if isinstance(v, str)}))
        elif dtype not in NUMERIC_DTYPES:
            raise DataError(f"feature {ref!r} has type {dtype}, which LightGBM cannot take")
    return levels


def feature_matrix(data: TrainingSet, levels: dict[str, tuple[str, ...]]) -> np.ndarray:
    """(rows, features) float64 in the card's order; NaN is missing."""
    columns = [
        category_codes(data.frame[ref], levels[ref]) if ref in levels else _column(data.frame, ref)
        for ref in data.feature_refs
    ]
    return np.column_stack(columns) if columns else np.empty((len(data.frame), 0))


def fit(
    data: TrainingSet,
    levels: dict[str, tuple[str, ...]],
    x: np.ndarray,
    y: np.ndarray,
    slices: tuple[np.ndarray, np.ndarray],
    seed: int,
) -> lightgbm.Booster:
    """LightGBM with early stopping on the validation slice; categoricals handled natively."""
    train_idx, valid_idx = slices
    names = list(data.feature_refs)
    categorical = [names.index(ref) for ref in levels]
    params = lightgbm_params(seed)
    train_set = lightgbm.Dataset(
        x[train_idx],
        y[train_idx],
        feature_name=names,
        categorical_feature=categorical,
        params={"verbosity": -1},
    )
    valid_set = lightgbm.Dataset(x[valid_idx], y[valid_idx], reference=train_set)
    with Progress("training", total=MAX_ROUNDS, unit="rounds") as bar:
        booster = lightgbm.train(
            params,
            train_set,
            num_boost_round=MAX_ROUNDS,
            valid_sets=[valid_set],
            valid_names=["validation"],
            callbacks=[
                lightgbm.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False),
                lambda _env: bar.advance(1),
            ],
        )
    return booster


def evaluate(
    spec: ModelKind,
    booster: lightgbm.Booster,
    holdout: pd.DataFrame,
    x_holdout: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
) -> HoldoutMetrics:
    truth = holdout[spec.label].to_numpy(np.float64)
    fallback = float(y[train_idx].mean())
    baselines = {}
    for baseline in spec.baselines:
        guess = baseline.predict(holdout)
        baselines[baseline.name] = metrics(truth, np.where(np.isnan(guess), fallback, guess))
    predicted = np.asarray(
        booster.predict(x_holdout, num_iteration=booster.best_iteration), dtype=np.float64
    )
    return HoldoutMetrics(rows=len(holdout), model=metrics(truth, predicted), baselines=baselines)


def compare(
    service: str, data: TrainingSet, other: TrainingSet, y: np.ndarray, seed: int
) -> ErrorMetrics:
    """The same learner (split, params, seed) on another service's features for the same
    rows: its holdout error, to set beside the model's."""
    same = len(other.frame) == len(data.frame) and other.frame[TIMESTAMP].equals(
        data.frame[TIMESTAMP]
    )
    if not same or not other.frame[data.label].equals(data.frame[data.label]):
        raise DataError(
            f"the training set of compared service {service!r} ({len(other.frame)} rows) does "
            f"not hold the same label rows as the model's ({len(data.frame)} rows)"
        )
    train_idx, valid_idx, holdout_idx = split_by_time(other.frame[TIMESTAMP])
    levels = categorical_levels(other, train_idx)
    x = feature_matrix(other, levels)
    booster = fit(other, levels, x, y, (train_idx, valid_idx), seed)
    predicted = booster.predict(x[holdout_idx], num_iteration=booster.best_iteration)
    return metrics(y[holdout_idx], np.asarray(predicted, dtype=np.float64))


def metrics(truth: np.ndarray, predicted: np.ndarray) -> ErrorMetrics:
    error = predicted - truth
    return ErrorMetrics(mae=float(np.abs(error).mean()), rmse=float(np.sqrt((error**2).mean())))


def _window(timestamps: pd.Series, holdout_idx: np.ndarray) -> TrainingWindow:
    return TrainingWindow(
        start=timestamps.iloc[0].to_pydatetime(),
        end=timestamps.iloc[-1].to_pydatetime(),
        holdout_start=timestamps.iloc[holdout_idx[0]].to_pydatetime(),
    )


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def git_revision(path: Path) -> str | None:
    """HEAD of the git work tree holding `path` (the feature repo), or None outside git."""
    try:
        done = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None
