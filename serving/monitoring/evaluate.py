"""Live accuracy: logged predictions joined with the outcomes that arrived later.

An outcomes file (Parquet) holds the label column (the card's label unless named) and either
`request_id` (with `row` for requests of several rows) or every join key of the model and a
time column. By request id the join is exact; by entity and time each outcome takes the
logged prediction of the same entity keys nearest in time, within `window`. Errors are
reported per model version and role (primary, later shadow and canary), and per hour of the
prediction: MAE and RMSE for a regression, log loss and AUC for a binary model, beside the
holdout metrics of the version's card.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pyarrow.parquet as pq

from serving.errors import CarraraError, UsageError
from serving.models.card import HoldoutMetrics, ModelCard
from serving.models.registry import ModelRegistry
from serving.monitoring.logged import read_log

BINARY_OBJECTIVES = frozenset({"binary", "cross_entropy", "xentropy"})
TIME_COLUMN = "event_timestamp"
LOG_LOSS_CLIP = 1e-15


@dataclass(frozen=True)
class OutcomeSpec:
    path: Path
    label: str | None = None  # None: the card's label
    time_column: str = TIME_COLUMN
    window: timedelta = timedelta(minutes=15)


@dataclass(frozen=True)
class Scores:
    version: str
    role: str
    hour: datetime | None  # None: every hour
    rows: int
    first: float  # MAE, or log loss
    second: float  # RMSE, or AUC


@dataclass(frozen=True)
class Evaluation:
    model: str
    binary: bool
    joined_by: str  # "request_id" or "entity keys and time"
    outcomes: int
    joined: int
    per_version: tuple[Scores, ...]
    per_hour: tuple[Scores, ...]
    holdout: dict[str, HoldoutMetrics | None]  # version -> its card's


def evaluate(
    log_root: Path,
    model: str,
    outcomes: OutcomeSpec,
    registry: ModelRegistry,
    since: datetime | None = None,
) -> Evaluation:
    logged = read_log(log_root, model, since, columns=lambda name: name.startswith("entity."))
    cards = {v: _card(registry, model, v) for v in sorted(logged["version"].unique(), key=int)}
    card = cards[max(cards, key=int)]
    label = outcomes.label or card.label
    frame = _read_outcomes(outcomes.path, label)
    if "request_id" in frame.columns:
        joined, how = _by_request_id(logged, frame), "request_id"
    else:
        joined, how = _by_entity_and_time(logged, frame, card, outcomes), "entity keys and time"
    binary = card.params.get("objective") in BINARY_OBJECTIVES
    truth = joined[label].to_numpy(np.float64)
    joined = joined.assign(_truth=truth, _hour=joined["time"].dt.floor("h"))
    return Evaluation(
        model=model,
        binary=binary,
        joined_by=how,
        outcomes=len(frame),
        joined=len(joined),
        per_version=tuple(_scores(joined, ["version", "role"], binary)),
        per_hour=tuple(_scores(joined, ["version", "role", "_hour"], binary)),
        holdout={v: c.metrics for v, c in cards.items()},
    )


def _card(registry: ModelRegistry, model: str, version: str) -> ModelCard:
    try:
        return registry.card(f"{model}:{version}")
    except CarraraError as exc:
        raise UsageError(
            f"the log names {model}:{version}, whose card is unreadable: {exc}"
        ) from None


def _read_outcomes(path: Path, label: str) -> pd.DataFrame:
    try:
        frame: pd.DataFrame = pq.read_table(path).to_pandas()
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the outcomes file {path}: {exc}") from None
    if label not in frame.columns:
        raise UsageError(
            f"outcomes file {path} has no column {label!r} (the label; --label names another); "
            f"its columns: {', '.join(map(str, frame.columns))}"
        )
    if not pd.api.types.is_numeric_dtype(frame[label]) and not pd.api.types.is_bool_dtype(
        frame[label]
    ):
        raise UsageError(f"outcomes file {path}: column {label!r} is not numeric")
    return frame.dropna(subset=[label])


def _by_request_id(logged: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    keys = ["request_id", "row"] if "row" in outcomes.columns else ["request_id"]
    right = outcomes.assign(request_id=outcomes["request_id"].astype(str))
    if "row" in keys:
        right["row"] = right["row"].astype(np.int32)
    return logged.merge(right, on=keys, how="inner", suffixes=("", "_outcome"))


def _by_entity_and_time(
    logged: pd.DataFrame, outcomes: pd.DataFrame, card: ModelCard, spec: OutcomeSpec
) -> pd.DataFrame:
    keys = [c.name for c in card.entities]
    needed = [*keys, spec.time_column]
    absent = [c for c in needed if c not in outcomes.columns]
    if absent:
        raise UsageError(
            f"outcomes file {spec.path} has no column {absent[0]!r}: it needs request_id, or "
            f"the model's join keys and a time ({', '.join(needed)})"
        )
    left = outcomes.copy()
    left["_time"] = pd.to_datetime(left[spec.time_column], utc=True).astype("datetime64[us, UTC]")
    right = logged.rename(columns={f"entity.{k}": k for k in keys})
    right["_time"] = right["time"].astype("datetime64[us, UTC]")
    right["_logged_time"] = right["_time"]
    for key in keys:
        try:
            left[key] = left[key].astype(right[key].dtype)
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"outcomes file {spec.path}: column {key!r} does not match the logged "
                f"{right[key].dtype} values ({exc})"
            ) from None
    joined = pd.merge_asof(
        left.sort_values("_time"),
        right.drop(
            columns=[c for c in right.columns if c in left.columns and c not in [*keys, "_time"]]
        ).sort_values("_time"),
        on="_time",
        by=keys,
        direction="nearest",
        tolerance=pd.Timedelta(spec.window),
    )
    return joined.dropna(subset=["prediction"]).assign(time=lambda f: f["_logged_time"])


def _scores(joined: pd.DataFrame, by: list[str], binary: bool) -> list[Scores]:
    out = []
    for key, group in joined.groupby(by, sort=True):
        truth = group["_truth"].to_numpy(np.float64)
        predicted = group["prediction"].to_numpy(np.float64)
        first, second = (
            (log_loss(truth, predicted), auc(truth, predicted))
            if binary
            else (float(np.abs(predicted - truth).mean()), rmse(truth, predicted))
        )
        hour = key[2].to_pydatetime() if len(by) > 2 else None
        out.append(Scores(str(key[0]), str(key[1]), hour, len(group), first, second))
    return out


def rmse(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.sqrt(((predicted - truth) ** 2).mean()))


def log_loss(truth: np.ndarray, probability: np.ndarray) -> float:
    p = np.clip(probability, LOG_LOSS_CLIP, 1 - LOG_LOSS_CLIP)
    return float(-(truth * np.log(p) + (1 - truth) * np.log(1 - p)).mean())


def auc(truth: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (the rank statistic, ties shared); NaN with one class only."""
    positives = truth == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = pd.Series(score).rank(method="average").to_numpy()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def render(evaluation: Evaluation) -> str:
    """The evaluation as a terminal table: per version, then per hour."""
    first, second = ("log loss", "AUC") if evaluation.binary else ("MAE", "RMSE")
    lines = [
        f"evaluate {evaluation.model}: {evaluation.joined:,} of {evaluation.outcomes:,} "
        f"outcomes joined to logged predictions by {evaluation.joined_by}",
        f"  {'version':<8} {'role':<8} {'rows':>8} {first:>10} {second:>10}   holdout "
        f"{'MAE':>9} {'RMSE':>9}",
    ]
    for s in evaluation.per_version:
        holdout = evaluation.holdout.get(s.version)
        card = f"{holdout.model.mae:>9.4g} {holdout.model.rmse:>9.4g}" if holdout else f"{'-':>19}"
        lines.append(
            f"  {s.version:<8} {s.role:<8} {s.rows:>8,} {s.first:>10.4g} {s.second:>10.4g}"
            f"           {card}"
        )
    lines.append(
        f"  per hour (UTC)   {'version':<8} {'role':<8} {'rows':>8} {first:>10} {second:>10}"
    )
    for s in evaluation.per_hour:
        hour = f"{s.hour:%Y-%m-%d %H:00}" if s.hour else ""
        lines.append(
            f"  {hour:<16} {s.version:<8} {s.role:<8} {s.rows:>8,} {s.first:>10.4g} "
            f"{s.second:>10.4g}"
        )
    if not evaluation.joined:
        lines.append("  no outcome matched a logged prediction: check --since, --window-s")
    return "\n".join(lines)
