"""Feature matrix -> predictions with a LightGBM booster; shared by the server and batch jobs.

Scores come from lignum, which walks LightGBM's trees from a compact layout and gives the
same result as `Booster.predict` bit for bit. Served, a request finds the model cold in the
CPU caches, and lignum's layout is what pays: for ETA (311 trees, one thread), 1 cold row
takes ~55 us against ~100 us for LightGBM's single-row fast path, 100 rows ~0.55 ms against
~2.2 ms. lignum keeps the GIL for a few rows (no hand-off to another server thread in the
middle of a request) and releases it for batches.

Exactness is checked, not assumed: each scorer first scores probe rows both ways, rows that
sit on, just below and just above every split threshold of the model, and hold every code
its categorical splits can test, NaN, zeros and infinities. A model lignum refuses (linear
trees, say) or scores differently is scored by `Booster.predict` instead, with a warning in
the log.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

import lignum
import numpy as np
from lightgbm import Booster

log = logging.getLogger(__name__)
PROBE_ROWS = 1024
PROBE_SINGLE_ROWS = 16  # also scored one by one: lignum picks its kernel by batch size
ZERO_AS_MISSING_BELOW = 1e-35  # LightGBM's kZeroThreshold: |x| <= this is "zero"
_ALWAYS_PROBED = (
    *(np.nan, 0.0, -0.0, 1.0, -1.0, 0.5, -0.5, np.inf, -np.inf),
    *(ZERO_AS_MISSING_BELOW, -ZERO_AS_MISSING_BELOW, 2 * ZERO_AS_MISSING_BELOW),
)


class Scorer:
    """Scores float64 matrices (NaN = missing) whose columns are the booster's features."""

    def __init__(self, booster: Booster, num_threads: int = 1, name: str = "model") -> None:
        self.booster = booster
        self.num_features = booster.num_feature()
        # Booster.predict uses best_iteration when early stopping recorded one: do the same.
        self._num_iteration = booster.best_iteration if booster.best_iteration > 0 else -1
        self._num_threads = num_threads
        self.exact_fast_path = _exact_lignum_model(booster, self._num_iteration, name)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Predictions for a (rows, num_features) float64 matrix."""
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"expected (rows, {self.num_features}) features, got {features.shape}")
        if self.exact_fast_path is not None:
            scores: np.ndarray = self.exact_fast_path.predict(features, n_jobs=self._num_threads)
            return scores
        return self._booster_predict(features)

    def _booster_predict(self, features: np.ndarray) -> np.ndarray:
        result = self.booster.predict(
            features, num_iteration=self._num_iteration, num_threads=self._num_threads
        )
        return np.asarray(result, dtype=np.float64)

    def __getstate__(self) -> Any:
        raise TypeError("a Scorer holds native handles; build one per process")


def _exact_lignum_model(booster: Booster, num_iteration: int, name: str) -> lignum.Model | None:
    """lignum's model of exactly the trees `Booster.predict` uses, if it scores the probe
    rows bit for bit as LightGBM does; else None (and a warning naming the model)."""
    text = booster.model_to_string(num_iteration=num_iteration)
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as file:
            file.write(text)
            file.flush()
            model = lignum.load(file.name, format="lightgbm")
    except (RuntimeError, ValueError, OSError) as exc:  # OSError: the temporary file
        log.warning("%s: scored by LightGBM itself, lignum cannot load it: %s", name, exc)
        return None
    try:
        probe = probe_rows(text, booster.num_feature())
    except (KeyError, ValueError, IndexError) as exc:  # a model text laid out unlike 4.x's
        log.warning("%s: scored by LightGBM itself, its trees could not be probed: %r", name, exc)
        return None
    expected = booster.predict(probe, num_iteration=num_iteration, num_threads=1)
    single = [model.predict(probe[i : i + 1], n_jobs=1)[0] for i in range(PROBE_SINGLE_ROWS)]
    batch = model.predict(probe, n_jobs=1)
    if np.array_equal(batch, expected) and np.array_equal(single, expected[:PROBE_SINGLE_ROWS]):
        return model
    log.warning("%s: scored by LightGBM itself, lignum's scores differ on probe rows", name)
    return None


def probe_rows(
    model_text: str, width: int, min_rows: int = PROBE_ROWS, seed: int = 0
) -> np.ndarray:
    """Rows in which each of a feature's split values (`split_values`), the next double
    either side of each and every one of `_ALWAYS_PROBED` appear in the feature's column:
    where two walks of the same trees could disagree. Shuffled per column, so rows mix them."""
    columns = []
    for found in split_values(model_text, width):
        on = np.array(sorted(found), dtype=np.float64)
        columns.append(
            np.concatenate(
                [on, np.nextafter(on, -np.inf), np.nextafter(on, np.inf), _ALWAYS_PROBED]
            )
        )
    rows = max(min_rows, *(len(c) for c in columns))
    rng = np.random.default_rng(seed)
    return np.stack([np.resize(rng.permutation(c), rows) for c in columns], axis=1)


def split_values(model_text: str, width: int) -> list[set[float]]:
    """Per feature, the values its splits turn on in a LightGBM text model: numerical
    thresholds, and for categorical splits every code their bitsets hold (32 a word) and one
    more."""
    values: list[set[float]] = [set() for _ in range(width)]
    for tree in model_text.split("end of trees")[0].split("\nTree=")[1:]:
        fields = dict(line.split("=", 1) for line in tree.splitlines()[1:] if "=" in line)
        if "split_feature" not in fields:
            continue  # a single leaf
        bounds = [int(b) for b in fields.get("cat_boundaries", "").split()]
        splits = zip(
            fields["split_feature"].split(),
            fields["threshold"].split(),
            fields["decision_type"].split(),
            strict=True,
        )
        for feature, threshold, decision in splits:
            if int(decision) & 1:  # categorical: the threshold indexes the node's bitset
                at = int(threshold)
                values[int(feature)].update(range(32 * (bounds[at + 1] - bounds[at]) + 1))
            else:
                values[int(feature)].add(float(threshold))
    return values
