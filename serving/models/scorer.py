"""Feature matrix -> exactly the scores `Booster.predict` gives; for the server, batch jobs and
`serving.load_scorer`.

Two ways to the same numbers, chosen per model version (verification.py):
- lignum, where it is proven equal to `Booster.predict` at every split of the model. Served, a
  request finds the model cold in the CPU caches, and lignum's compact layout pays there: for
  ETA (311 trees, one thread) 1 cold row takes ~55 us against ~100 us for LightGBM's
  single-row fast path, 100 rows ~0.55 ms against ~2.2 ms. It keeps the GIL for a few rows
  and releases it for batches. A model with `threshold=inf` splits, where lignum sends +inf
  the other way, is given +inf as the largest double, proven equivalent for that model.
- LightGBM itself, for every other model: one row through its single-row fast path (a
  FastConfig made once; a call passes three pointers, skipping `Booster.predict`'s Python-side
  checks and allocations), more rows through `Booster.predict`. Both run LightGBM's same
  Predictor on the same trees, so they agree bit for bit (a test checks it).
The verdict comes from the version's card (`ModelCard.scorer`) when that record still matches
the trees and the libraries; otherwise the model is verified here, once per Scorer.

Invariants: `score` never returns what `Booster.predict(matrix)` would not, NaN and +-inf
inputs included; a model with more than one score per row is refused (ModelError) before any
request can reach it.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lignum
import numpy as np
from lightgbm import Booster
from lightgbm.basic import _LIB, _safe_call  # type: ignore[attr-defined]

from serving.errors import ModelError
from serving.models.card import ScorerRecord, read_card
from serving.models.model_text import check_parses
from serving.models.verification import (
    LIGNUM,
    check_model_kind,
    lignum_input,
    load_lignum,
    record_matches,
    served_iteration,
    verify,
)

log = logging.getLogger(__name__)
C_API_PREDICT_NORMAL = 0
C_API_DTYPE_FLOAT64 = 1
# Our own prototype of the C function (LightGBM's `_LIB` attribute is left untouched). It
# keeps the GIL: the call takes ~10-100 us, and releasing the GIL around it would hand it to
# a waiting server thread and queue this one behind that thread's whole request.
_PREDICT_ONE = ctypes.PYFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_int64),
    ctypes.POINTER(ctypes.c_double),
)(("LGBM_BoosterPredictForMatSingleRowFast", _LIB))


class Scorer:
    """Scores float64 matrices (NaN = missing) whose columns are the booster's features."""

    def __init__(
        self,
        booster: Booster,
        num_threads: int = 1,
        name: str = "model",
        record: ScorerRecord | None = None,
        model_sha256: str = "",
    ) -> None:
        check_model_kind(booster, name)
        self.booster = booster
        self.num_features = booster.num_feature()
        # Booster.predict uses best_iteration when early stopping recorded one: so do both.
        self._num_iteration = served_iteration(booster)
        self._num_threads = num_threads
        trees = booster.model_to_string(num_iteration=self._num_iteration)
        self.record, self._lignum = _verdict(booster, trees, name, record, model_sha256)
        self._inf_as_largest = self.record.inf_as_largest
        self._single_row = None if self._lignum else _SingleRow(booster, self._num_iteration)
        if self._lignum is None:
            log.warning("%s: scored by LightGBM itself: %s", name, self.record.reason)

    @property
    def uses_lignum(self) -> bool:
        return self._lignum is not None

    def score(self, features: np.ndarray) -> np.ndarray:
        """Predictions for a (rows, num_features) float64 matrix."""
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"expected (rows, {self.num_features}) features, got {features.shape}")
        if self._lignum is not None:
            given = lignum_input(features, self._inf_as_largest)
            scores: np.ndarray = self._lignum.predict(given, n_jobs=self._num_threads)
            return scores
        if features.shape[0] == 1 and self._single_row is not None:
            return self._single_row.predict(features)
        if features.shape[0] == 0:
            return np.zeros(0)
        result = self.booster.predict(
            features, num_iteration=self._num_iteration, num_threads=self._num_threads
        )
        return np.asarray(result, dtype=np.float64)

    def __getstate__(self) -> Any:
        raise TypeError("a Scorer holds native handles; build one per process")


def _verdict(
    booster: Booster, trees: str, name: str, record: ScorerRecord | None, model_sha256: str
) -> tuple[ScorerRecord, lignum.Model | None]:
    """The record's verdict while it matches `trees` and the libraries, else a new one."""
    if record is not None and record_matches(record, trees):
        if record.scorer != LIGNUM:
            return record, None
        try:
            return record, load_lignum(trees)
        except (RuntimeError, ValueError, OSError) as exc:  # OSError: the temporary file
            log.warning("%s: lignum no longer loads the model it was verified on: %s", name, exc)
    verified = verify(booster, trees, name, model_sha256)
    return verified.record, verified.model


class _SingleRow:
    """LightGBM's single-row fast path: a FastConfig made once, buffers per calling thread.

    A FastConfig is read-only during a call and LightGBM runs single-row predictions of one
    booster under its mutex, so threads share it; only the input and output buffers whose
    pointers the call takes are per thread.
    """

    def __init__(self, booster: Booster, num_iteration: int) -> None:
        self._booster = booster  # the FastConfig points at it
        self._width = booster.num_feature()
        handle = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(C_API_PREDICT_NORMAL),
                ctypes.c_int(0),  # start iteration
                ctypes.c_int(num_iteration),
                ctypes.c_int(C_API_DTYPE_FLOAT64),
                ctypes.c_int32(self._width),
                ctypes.c_char_p(b"num_threads=1"),
                ctypes.byref(handle),
            )
        )
        self._handle = handle
        self._local = threading.local()
        weakref.finalize(self, _free_fast_config, handle.value)

    def predict(self, row: np.ndarray) -> np.ndarray:
        buffers: _Buffers | None = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = _Buffers.make(self._handle, self._width)
        buffers.row[...] = row
        _safe_call(_PREDICT_ONE(*buffers.args))
        return buffers.out.copy()


@dataclass(frozen=True)
class _Buffers:
    row: np.ndarray  # (1, width) float64
    out: np.ndarray  # (1,) float64
    args: tuple[Any, ...]  # the call's arguments, pointers made once

    @classmethod
    def make(cls, handle: ctypes.c_void_p, width: int) -> _Buffers:
        row = np.zeros((1, width), dtype=np.float64)
        out = np.zeros(1, dtype=np.float64)
        args = (
            handle,
            ctypes.c_void_p(row.ctypes.data),
            ctypes.pointer(ctypes.c_int64(0)),
            out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
        )
        return cls(row, out, args)


def _free_fast_config(handle: int | None) -> None:
    if handle:
        _safe_call(_LIB.LGBM_FastConfigFree(ctypes.c_void_p(handle)))


def load_scorer(path: str | os.PathLike[str], num_threads: int = 1) -> Scorer:
    """A Scorer for the LightGBM text model at `path`: its `score(matrix)` gives, for a float64
    matrix in the model's feature order, exactly what the server gives for that model.

    The text is first parsed by LightGBM in a child process (LightGBM aborts the whole process
    on some malformed models). A registry version's model.json beside it, describing this very
    text, spares that check and the verification, as it does for the server.
    """
    model_path = Path(path)
    try:
        text = model_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{model_path} is unreadable: {exc}") from exc
    digest = hashlib.sha256(text.encode()).hexdigest()
    record, checked = None, False
    card_path = model_path.with_name("model.json")
    if card_path.is_file():
        try:
            card = read_card(card_path)
        except ModelError:
            card = None
        if card is not None and card.model_sha256 == digest:
            record, checked = card.scorer, card.checked_sha256 == digest
    if not checked:
        check_parses(text, str(model_path))
    booster = Booster(model_str=text)
    return Scorer(booster, num_threads, str(model_path), record, digest)
