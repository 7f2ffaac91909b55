"""Feature matrix -> predictions with a LightGBM booster; shared by the server and batch jobs.

One row (the common online case) goes through LightGBM's "single row fast" C API: the
predictor is configured once and each call passes only pointers, which skips the Python-side
checks and allocations of `Booster.predict` (~15 us of its ~28 us for ETA's 168 trees). More
rows go through `Booster.predict`. Both compute the exact same trees: a test compares them.

A fast config keeps per-call buffers, so each thread gets its own (with its own input and
output buffers, their pointers made once): server threads never wait on each other here.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
from lightgbm import Booster
from lightgbm.basic import _LIB, _safe_call  # type: ignore[attr-defined]

from serving.per_thread import PerThread

C_API_PREDICT_NORMAL = 0
C_API_DTYPE_FLOAT64 = 1
# Our own prototype of the C function (LightGBM's `_LIB` attribute is left untouched). It
# keeps the GIL: the call takes ~10-20 us, and releasing the GIL around it would hand it to a
# waiting server thread and queue this one behind that thread's whole request.
_PREDICT_ONE = ctypes.PYFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_int64),
    ctypes.POINTER(ctypes.c_double),
)(("LGBM_BoosterPredictForMatSingleRowFast", _LIB))


class _FastRow:
    """One thread's single-row predictor: a fast config and its buffers."""

    def __init__(self, booster: Booster, num_iteration: int, num_threads: int) -> None:
        width = booster.num_feature()
        self.row = np.zeros((1, width), dtype=np.float64)
        self.out = np.zeros(1, dtype=np.float64)
        self.handle = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(C_API_PREDICT_NORMAL),
                ctypes.c_int(0),
                ctypes.c_int(num_iteration),
                ctypes.c_int(C_API_DTYPE_FLOAT64),
                ctypes.c_int32(width),
                ctypes.c_char_p(f"num_threads={num_threads}".encode()),
                ctypes.byref(self.handle),
            )
        )
        self._args: tuple[Any, ...] = (
            self.handle,
            ctypes.c_void_p(self.row.ctypes.data),
            ctypes.pointer(ctypes.c_int64(0)),
            self.out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
        )

    def predict(self, features: np.ndarray) -> float:
        self.row[...] = features
        _safe_call(_PREDICT_ONE(*self._args))
        return float(self.out[0])

    def free(self) -> None:
        if self.handle:
            self._args = ()  # a late call now raises TypeError instead of using freed memory
            _safe_call(_LIB.LGBM_FastConfigFree(self.handle))
            self.handle = ctypes.c_void_p()


class Scorer:
    """Scores float64 matrices (NaN = missing) whose columns are the booster's features."""

    def __init__(self, booster: Booster, num_threads: int = 1) -> None:
        self.booster = booster
        self.num_features = booster.num_feature()
        # Booster.predict uses best_iteration when early stopping recorded one: do the same.
        self._num_iteration = booster.best_iteration if booster.best_iteration > 0 else -1
        self._num_threads = num_threads
        self._fast_rows = PerThread(
            lambda: _FastRow(self.booster, self._num_iteration, self._num_threads)
        )

    def score(self, features: np.ndarray) -> np.ndarray:
        """Predictions for a (rows, num_features) float64 matrix."""
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"expected (rows, {self.num_features}) features, got {features.shape}")
        if features.shape[0] == 1:
            return np.array([self._fast_rows.get().predict(features)])
        result = self.booster.predict(
            features, num_iteration=self._num_iteration, num_threads=self._num_threads
        )
        return np.asarray(result, dtype=np.float64)

    def close(self) -> None:
        for fast in self._fast_rows.every():
            fast.free()

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> Any:
        raise TypeError("a Scorer holds native handles; build one per process")
