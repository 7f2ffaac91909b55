"""Drift: a feature's training distribution, served values binned the same way, and PSI.

The training distribution of each feature (its card's `training_distributions`) is made at
registration from the training rows: decile bins for a numeric feature, one bin per level for
a categorical one (its values are level codes), each bin with its share of the present values,
and the share of rows where the feature was missing. Served values are binned on the same
edges; the population stability index compares the two,
PSI = sum over bins of (served - training) * ln(served / training), with empty bins floored at
EPSILON. Missing values are left out of PSI and reported as a rate of their own, so a view
going missing is not mistaken for a shift of its values.

`DriftWindows` is the server's side: the feature vectors of the last `rows` logged
predictions per model version (a ring buffer, filled by the prediction log's thread, off the
request path), and PSI per feature computed when Prometheus scrapes. No pandas or pyarrow.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from serving.models.card import FeatureDistribution, ModelCard
from serving.monitoring.prediction_log import PredictionRecord

log = logging.getLogger(__name__)

QUANTILE_BINS = 10
WARN_PSI = 0.1
ALERT_PSI = 0.2
EPSILON = 1e-4  # an empty bin's share, so that ln() stays finite
MIN_SERVED_ROWS = 100  # fewer served values give PSI too noisy to export


def training_distributions(
    matrix: np.ndarray, refs: Sequence[str], levels: Mapping[str, Sequence[str]]
) -> dict[str, FeatureDistribution]:
    """Each feature's distribution over the rows of `matrix` (the model's input order)."""
    return {
        ref: categorical_distribution(matrix[:, i], len(levels[ref]))
        if ref in levels
        else numeric_distribution(matrix[:, i])
        for i, ref in enumerate(refs)
    }


def numeric_distribution(values: np.ndarray) -> FeatureDistribution:
    present = values[~np.isnan(values)]
    missing = 1.0 - len(present) / len(values) if len(values) else 0.0
    if not len(present):
        return FeatureDistribution("numeric", (), (), missing)
    inner = np.linspace(0.0, 1.0, QUANTILE_BINS + 1)[1:-1]
    # "higher": edges are values that occur, so a feature of few values gets a bin per value
    edges = np.unique(np.quantile(present, inner, method="higher"))
    edges = edges[np.isfinite(edges)]
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
    return FeatureDistribution(
        "numeric",
        tuple(float(e) for e in edges),
        tuple(float(c) for c in counts / len(present)),
        missing,
    )


def categorical_distribution(codes: np.ndarray, n_levels: int) -> FeatureDistribution:
    """Level shares; a code outside the levels (NaN: unseen or missing) counts as missing."""
    known = codes[~np.isnan(codes)].astype(np.int64)
    missing = 1.0 - len(known) / len(codes) if len(codes) else 0.0
    counts = np.bincount(known, minlength=n_levels)[:n_levels]
    shares = counts / len(known) if len(known) else counts.astype(np.float64)
    return FeatureDistribution("categorical", (), tuple(float(s) for s in shares), missing)


@dataclass(frozen=True)
class ServedShares:
    proportions: np.ndarray  # per bin of the training distribution, over present values
    present: int
    missing_rate: float  # of all served values


def served_shares(distribution: FeatureDistribution, values: np.ndarray) -> ServedShares:
    """Served values binned as the training values were."""
    present = values[~np.isnan(values)]
    bins = len(distribution.proportions)
    if distribution.kind == "numeric":
        index = np.searchsorted(np.asarray(distribution.edges), present, side="right")
    else:  # codes beyond the levels cannot occur: the server made them from the levels
        index = present.astype(np.int64)
        index = index[(index >= 0) & (index < bins)]
    counts = np.bincount(index, minlength=bins)[:bins].astype(np.float64)
    missing = 1.0 - len(present) / len(values) if len(values) else 0.0
    shares = counts / len(index) if len(index) else counts
    return ServedShares(shares, len(index), missing)


def psi(training: Sequence[float] | np.ndarray, served: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    expected = np.maximum(np.asarray(training, dtype=np.float64), EPSILON)
    actual = np.maximum(served, EPSILON)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def level(value: float) -> str:
    """A PSI's level: alert from ALERT_PSI, warn from WARN_PSI, else ok."""
    return "alert" if value >= ALERT_PSI else "warn" if value >= WARN_PSI else "ok"


@dataclass(frozen=True)
class FeaturePsi:
    model: str
    version: str
    feature: str
    psi: float
    missing_rate: float


class _Window:
    """The last `capacity` feature vectors of one model version; written by one thread,
    read under the lock by the scraper."""

    def __init__(self, card: ModelCard, capacity: int) -> None:
        self.card = card
        self._values = np.full((capacity, len(card.feature_refs)), np.nan)
        self._next = 0
        self._filled = 0
        self._lock = threading.Lock()

    def add(self, features: np.ndarray) -> None:
        capacity = len(self._values)
        features = features[-capacity:]
        with self._lock:
            end = self._next + len(features)
            if end <= capacity:
                self._values[self._next : end] = features
            else:
                split = capacity - self._next
                self._values[self._next :] = features[:split]
                self._values[: end - capacity] = features[split:]
            self._next = end % capacity
            self._filled = min(capacity, self._filled + len(features))

    def served(self) -> np.ndarray:
        with self._lock:
            return self._values[: self._filled].copy()


class DriftWindows:
    """The served feature vectors per model version, fed by the prediction log's thread
    (a `RecordConsumer`), and their PSI per feature when asked (Prometheus scrapes)."""

    def __init__(self, rows: int, card_of: Callable[[str, str], ModelCard | None]) -> None:
        self._rows = rows
        self._card_of = card_of  # (name, version) -> its card; None: not measurable
        self._windows: dict[tuple[str, str], _Window | None] = {}

    def consume(self, records: Sequence[PredictionRecord]) -> None:
        batches: dict[tuple[str, str], list[np.ndarray]] = {}
        for record in records:
            batches.setdefault((record.model, record.version), []).append(record.features)
        for key, features in batches.items():
            if key not in self._windows:  # first seen: its card, read once
                self._windows[key] = self._open(*key)
            window = self._windows[key]
            matrix = np.vstack(features)
            if window is not None and matrix.shape[1] == len(window.card.feature_refs):
                window.add(matrix)

    def flush(self) -> None:
        pass  # nothing buffered: every record went into its window

    def close(self) -> None:
        pass

    def _open(self, model: str, version: str) -> _Window | None:
        card = self._card_of(model, version)
        if card is None or card.training_distributions is None:
            log.info(
                "%s:%s has no training distributions in its card: drift not measured",
                model,
                version,
            )
            return None
        return _Window(card, self._rows)

    def psi(self) -> Iterator[FeaturePsi]:
        for (model, version), window in list(self._windows.items()):
            if window is None:
                continue
            served = window.served()
            if len(served) < MIN_SERVED_ROWS:
                continue
            yield from _window_psi(model, version, window.card, served)


def _window_psi(
    model: str, version: str, card: ModelCard, served: np.ndarray
) -> Iterator[FeaturePsi]:
    distributions = card.training_distributions or {}
    for i, ref in enumerate(card.feature_refs):
        distribution = distributions.get(ref)
        if distribution is None or not distribution.proportions:
            continue
        shares = served_shares(distribution, served[:, i])
        if shares.present:
            value = psi(distribution.proportions, shares.proportions)
            yield FeaturePsi(model, version, ref, value, shares.missing_rate)
