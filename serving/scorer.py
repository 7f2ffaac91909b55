"""Feature matrix -> predictions with a LightGBM booster; shared by the server and batch jobs.

One row (the common online case) goes through LightGBM's "single row fast" C API: the
predictor is configured once per model and each call only passes a pointer, which skips the
Python-side checks and allocations of `Booster.predict` (tens of microseconds). More rows go
through `Booster.predict`. Both compute the exact same trees: a test compares them.

The fast config keeps per-call buffers, so calls on one model are serialised by a lock; the
critical section is a few microseconds.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np
from lightgbm import Booster
from lightgbm.basic import _LIB, _safe_call  # type: ignore[attr-defined]

C_API_PREDICT_NORMAL = 0
C_API_DTYPE_FLOAT64 = 1


class Scorer:
    """Scores float64 matrices (NaN = missing) whose columns are the booster's features."""

    def __init__(self, booster: Booster, num_threads: int = 1) -> None:
        self.booster = booster
        self.num_features = booster.num_feature()
        # Booster.predict uses best_iteration when early stopping recorded one: do the same.
        self._num_iteration = booster.best_iteration if booster.best_iteration > 0 else -1
        self._num_threads = num_threads
        self._lock = threading.Lock()
        self._out = np.zeros(1, dtype=np.float64)
        self._out_len = ctypes.c_int64(0)
        self._fast = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(C_API_PREDICT_NORMAL),
                ctypes.c_int(0),
                ctypes.c_int(self._num_iteration),
                ctypes.c_int(C_API_DTYPE_FLOAT64),
                ctypes.c_int32(self.num_features),
                ctypes.c_char_p(f"num_threads={num_threads}".encode()),
                ctypes.byref(self._fast),
            )
        )

    def score(self, features: np.ndarray) -> np.ndarray:
        """Predictions for a (rows, num_features) float64 C-contiguous matrix."""
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"expected (rows, {self.num_features}) features, got {features.shape}")
        if features.shape[0] == 1:
            return self._score_one(np.ascontiguousarray(features[0], dtype=np.float64))
        result = self.booster.predict(
            features, num_iteration=self._num_iteration, num_threads=self._num_threads
        )
        return np.asarray(result, dtype=np.float64)

    def _score_one(self, row: np.ndarray) -> np.ndarray:
        with self._lock:
            _safe_call(
                _LIB.LGBM_BoosterPredictForMatSingleRowFast(
                    self._fast,
                    row.ctypes.data_as(ctypes.c_void_p),
                    ctypes.byref(self._out_len),
                    self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
                )
            )
            return self._out.copy()

    def close(self) -> None:
        if self._fast:
            _safe_call(_LIB.LGBM_FastConfigFree(self._fast))
            self._fast = ctypes.c_void_p()

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> Any:
        raise TypeError("a Scorer holds a native handle; build one per process")
