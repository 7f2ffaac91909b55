"""Benchmark: the scorer against `Booster.predict` on a wide suite of LightGBM model kinds.

Every kind (objectives x boosting types, plus settings: linear trees, categorical features with
many levels, use_missing / zero_as_missing, early stopping, deep trees, ...) is trained on
synthetic data with NaN, exact zeros and integer ties, so that LightGBM writes every kind of
split (`threshold=inf` ones among them). For each model:
- the Scorer is built as the server builds it: verification at every split (timed), or the
  model refused (multi-output kinds must be);
- it scores the verification's own edge rows (every split's threshold, the next double either
  side, +-inf, NaN, +-0, ..., on a path that reaches it) and random rows over the model's
  values, in one batch and row by row, against `Booster.predict`: any difference is silent.
Then, in one run, the 1-row cost of a model scored by LightGBM (the fallback: the Scorer's
single-row fast path) against LightGBM's own single-row fast path called directly, and
`Booster.predict`, warm and cold (caches evicted before each call), interleaved call by call.

Targets: zero silent differences on every accepted model; fallback 1-row p50 at most 1.2x
LightGBM's fast path; verification of the ~300-tree model under 2 s.

    python -m benchmarks.scorer_suite [--small] [--out benchmarks/out/scorer_suite.json]
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from lightgbm.basic import _LIB, _safe_call  # type: ignore[attr-defined]

from benchmarks.harness import ROOT, latency, stamp, table, write_json
from serving.errors import ModelError
from serving.models.scorer import _PREDICT_ONE, Scorer
from serving.models.split_inputs import build_inputs, random_inputs
from serving.models.trees import parse_trees
from serving.models.verification import served_iteration

SEED = 20261201
RANDOM_ROWS = 20_000
SINGLE_ROWS = 1_000  # rows also scored one at a time (all with an infinity among them)
TIMED_CALLS = 2_000
EVICT_MB = 48  # more than this machine's last-level cache (32 MB)
ROUNDS = 6
WARMUP = 5  # untimed calls at the start of each block

OBJECTIVES: dict[str, tuple[dict[str, Any], str]] = {  # name -> (params, label kind)
    "regression": ({"objective": "regression"}, "real"),
    "regression_sqrt": ({"objective": "regression", "reg_sqrt": True}, "real"),
    "regression_l1": ({"objective": "regression_l1"}, "real"),
    "huber": ({"objective": "huber"}, "real"),
    "fair": ({"objective": "fair"}, "real"),
    "quantile": ({"objective": "quantile", "alpha": 0.7}, "real"),
    "poisson": ({"objective": "poisson"}, "positive"),
    "mape": ({"objective": "mape"}, "positive"),
    "gamma": ({"objective": "gamma"}, "positive"),
    "tweedie": ({"objective": "tweedie", "tweedie_variance_power": 1.3}, "positive"),
    "binary": ({"objective": "binary"}, "binary"),
    "cross_entropy": ({"objective": "cross_entropy"}, "probability"),
    "cross_entropy_lambda": ({"objective": "cross_entropy_lambda"}, "probability"),
    "lambdarank": ({"objective": "lambdarank"}, "rank"),
    "rank_xendcg": ({"objective": "rank_xendcg"}, "rank"),
}
BOOSTING: dict[str, dict[str, Any]] = {
    "gbdt": {},
    "dart": {"boosting": "dart", "drop_rate": 0.2},
    "rf": {"boosting": "rf", "bagging_fraction": 0.7, "bagging_freq": 1},
    "goss": {"data_sample_strategy": "goss"},
}
SETTINGS: dict[str, dict[str, Any]] = {  # applied to regression and binary
    "linear_tree": {"linear_tree": True},
    "zero_as_missing": {"zero_as_missing": True},
    "no_missing": {"use_missing": False},
    "categorical_1000": {"max_cat_threshold": 64, "cat_smooth": 1.0, "min_data_per_group": 5},
    "deep": {"num_leaves": 255, "min_data_in_leaf": 2},
    "extra_trees": {"extra_trees": True},
    "tiny_leaves": {"min_data_in_leaf": 1, "min_sum_hessian_in_leaf": 0.0},
    "max_bin_7": {"max_bin": 7},
}


@dataclass(frozen=True)
class Kind:
    name: str
    params: dict[str, Any]
    labels: str  # real, positive, binary, probability, rank, classes
    rounds: int = 60
    early_stopping: bool = False
    levels: int = 40  # of the categorical feature
    refused: bool = False  # a multi-output kind: the Scorer must refuse it


def kinds() -> list[Kind]:
    found = []
    for objective, (params, labels) in OBJECTIVES.items():
        for boosting, extra in BOOSTING.items():
            found.append(
                Kind(
                    f"{objective}/{boosting}",
                    {**params, **extra},
                    labels,
                    early_stopping=boosting in ("gbdt", "goss"),
                )
            )
    for objective in ("regression", "binary"):
        params, labels = OBJECTIVES[objective]
        for setting, extra in SETTINGS.items():
            levels = 1000 if setting == "categorical_1000" else 40
            found.append(Kind(f"{objective}/{setting}", {**params, **extra}, labels, levels=levels))
    found += [
        Kind("regression/300_trees", {"objective": "regression"}, "real", rounds=300),
        Kind("binary/300_trees", {"objective": "binary"}, "binary", rounds=300),
        Kind("multiclass", {"objective": "multiclass", "num_class": 3}, "classes", refused=True),
        Kind(
            "multiclassova", {"objective": "multiclassova", "num_class": 3}, "classes", refused=True
        ),
    ]
    return found


def small_kinds() -> list[Kind]:
    """A slice that still has each path: lignum, clipped infinities, fallbacks, refusals."""
    wanted = (
        "regression/gbdt",
        "binary/goss",
        "cross_entropy/dart",
        "poisson/rf",
        "regression_sqrt/gbdt",
        "regression/linear_tree",
        "binary/zero_as_missing",
        "regression/categorical_1000",
        "lambdarank/gbdt",
        "multiclass",
    )
    return [k for k in kinds() if k.name in wanted]


def make_data(kind: Kind, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Features (12 numeric with NaN, zeros and ties; 1 categorical) and labels for `kind`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 13))
    x[:, 1] = rng.integers(0, 5, rows)  # ties and exact zeros
    x[:, 2] = np.where(rng.random(rows) < 0.3, 0.0, x[:, 2])  # zeros, for zero_as_missing
    x[:, 3] = rng.exponential(size=rows)
    x[rng.random(rows) < 0.4, 4] = np.nan  # missing in many rows: threshold=inf splits
    x[rng.random((rows, 13)) < 0.05] = np.nan
    x[:, 12] = rng.integers(0, kind.levels, rows)  # categorical
    x[rng.random(rows) < 0.05, 12] = np.nan
    signal = (
        np.nan_to_num(x[:, 0]) * 2
        + np.sin(np.nan_to_num(x[:, 3]))
        + np.isnan(x[:, 4]) * 1.5
        + (np.nan_to_num(x[:, 12]) % 7 == 3)
        + 0.5 * rng.normal(size=rows)
    )
    group = None
    if kind.labels == "real":
        y = signal
    elif kind.labels == "positive":
        y = np.exp(signal / 3) + 0.01
    elif kind.labels == "binary":
        y = (signal > np.median(signal)).astype(float)
    elif kind.labels == "probability":
        y = 1 / (1 + np.exp(-signal))
    elif kind.labels == "rank":
        y = np.clip(np.round(signal - signal.min()), 0, 4)
        group = np.full(rows // 20, 20)
        y = y[: group.sum()]
        x = x[: group.sum()]
    else:
        y = np.digitize(signal, np.quantile(signal, [1 / 3, 2 / 3])).astype(float)
    return x, y, group


def train(kind: Kind, rows: int, rounds: int, seed: int = SEED) -> lgb.Booster:
    x, y, group = make_data(kind, rows, seed)
    params = {"verbose": -1, "seed": 1, "num_threads": 2, "num_leaves": 31, **kind.params}
    cut = int(len(x) * 0.8) // 20 * 20
    train_group = None if group is None else group[: cut // 20]
    valid_group = None if group is None else group[cut // 20 :]
    data = lgb.Dataset(x[:cut], y[:cut], group=train_group, categorical_feature=[12])
    callbacks: list[Callable[..., Any]] = []
    valid_sets: list[lgb.Dataset] = []
    if kind.early_stopping:
        valid_sets = [lgb.Dataset(x[cut:], y[cut:], group=valid_group, reference=data)]
        callbacks = [lgb.early_stopping(5, verbose=False)]
    return lgb.train(params, data, rounds, valid_sets=valid_sets, callbacks=callbacks)


@dataclass
class Result:
    kind: str
    trees: int
    best_iteration: int
    scorer: str  # lignum, lignum+clip, lightgbm, refused
    reason: str
    verify_s: float
    verify_cpu_s: float  # CPU time of this process while verifying (all its threads)
    splits: int
    edge_rows: int
    silent: int  # rows where the Scorer's score differs from Booster.predict's, bit for bit
    expected: str = ""  # what was wrong, when something was
    problems: list[str] = field(default_factory=list)


def check(kind: Kind, booster: lgb.Booster) -> tuple[Result, Scorer | None]:
    trees = booster.num_trees()
    started, cpu = time.perf_counter(), time.process_time()
    try:
        scorer = Scorer(booster, name=kind.name)
    except ModelError as exc:
        result = Result(
            kind.name, trees, booster.best_iteration, "refused", str(exc), 0, 0, 0, 0, 0
        )
        if not kind.refused:
            result.problems.append("refused but should be served")
        return result, None
    verify_s = time.perf_counter() - started
    verify_cpu_s = time.process_time() - cpu
    name = scorer.record.scorer + ("+inf" if scorer.record.inf_as_largest else "")
    text = booster.model_to_string(num_iteration=served_iteration(booster))
    parsed = parse_trees(text, booster.num_feature())
    edge = build_inputs(parsed, booster.num_feature()).matrix
    rows = np.vstack([edge, random_inputs(parsed, booster.num_feature(), RANDOM_ROWS, SEED)])
    expected = np.asarray(booster.predict(rows), dtype=np.float64)
    silent = _differ(scorer.score(rows), expected)
    rng = np.random.default_rng(SEED)
    with_inf = np.flatnonzero(np.isinf(rows).any(axis=1))
    singles = np.unique(
        np.concatenate(
            [
                rng.choice(with_inf, min(SINGLE_ROWS // 2, len(with_inf)), replace=False),
                rng.choice(len(rows), min(SINGLE_ROWS // 2, len(rows)), replace=False),
            ]
        )
    )
    one_by_one = np.array([scorer.score(rows[i : i + 1])[0] for i in singles])
    silent |= {int(singles[i]) for i in _wrong(one_by_one, expected[singles])}
    result = Result(
        kind.name,
        trees,
        booster.best_iteration,
        name,
        scorer.record.reason,
        round(verify_s, 3),
        round(verify_cpu_s, 3),
        scorer.record.splits,
        len(edge),
        len(silent),
    )
    if kind.refused:
        result.problems.append("served but should be refused")
    if silent:
        at = min(silent)
        result.expected = f"row {at}: {rows[at].tolist()} -> Booster.predict {expected[at]!r}"
        result.problems.append(f"{len(silent)} silent differences")
    return result, scorer


def _wrong(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    got = np.ascontiguousarray(got, dtype=np.float64)
    return np.flatnonzero(got.view(np.int64) != np.ascontiguousarray(expected).view(np.int64))


def _differ(got: np.ndarray, expected: np.ndarray) -> set[int]:
    return set(_wrong(got, expected).tolist())


# --- the fallback's 1-row cost ---------------------------------------------------------------


class FastPath:
    """LightGBM's own single-row fast path, called directly: the baseline."""

    def __init__(self, booster: lgb.Booster) -> None:
        width = booster.num_feature()
        self.handle = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(0),
                ctypes.c_int(0),
                ctypes.c_int(served_iteration(booster)),
                ctypes.c_int(1),
                ctypes.c_int32(width),
                ctypes.c_char_p(b"num_threads=1"),
                ctypes.byref(self.handle),
            )
        )
        self.row = np.zeros((1, width))
        self.out = np.zeros(1)
        self.args = (
            self.handle,
            ctypes.c_void_p(self.row.ctypes.data),
            ctypes.pointer(ctypes.c_int64(0)),
            self.out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
        )

    def predict(self, row: np.ndarray) -> float:
        self.row[...] = row
        _safe_call(_PREDICT_ONE(*self.args))
        return float(self.out[0])

    def close(self) -> None:
        _safe_call(_LIB.LGBM_FastConfigFree(self.handle))


def time_fallback(booster: lgb.Booster, scorer: Scorer, calls: int) -> dict[str, Any]:
    """1-row latency of the three ways, in blocks of calls that alternate order round by round
    (a way never always follows the same other way); warm, then cold: the last-level cache
    overwritten before each call."""
    rows = random_inputs(
        parse_trees(booster.model_to_string(), booster.num_feature()),
        booster.num_feature(),
        256,
        SEED,
    )
    fast = FastPath(booster)
    ways: dict[str, Callable[[np.ndarray], object]] = {
        "scorer": scorer.score,
        "lightgbm_fast_path": fast.predict,
        "booster_predict": booster.predict,
    }
    for i in range(len(rows)):  # the same answers, before any timing
        row = rows[i : i + 1]
        assert scorer.score(row)[0] == fast.predict(row) == booster.predict(row)[0]
    evict = np.zeros(EVICT_MB * 2**20 // 8)
    out: dict[str, Any] = {}
    for mode, count in (("warm", calls), ("cold", max(ROUNDS, calls // 8))):
        samples: dict[str, list[int]] = {name: [] for name in ways}
        for round_ in range(ROUNDS):
            for name in list(ways)[:: 1 if round_ % 2 == 0 else -1]:
                way = ways[name]
                for i in range(-WARMUP, count // ROUNDS):
                    row = rows[i % len(rows) : i % len(rows) + 1]
                    if mode == "cold":
                        evict += 1.0
                    started = time.perf_counter_ns()
                    way(row)
                    if i >= 0:
                        samples[name].append(time.perf_counter_ns() - started)
        out[mode] = {name: asdict(latency(s)) for name, s in samples.items()}
    fast.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a slice, tiny data (smoke test)")
    parser.add_argument("--kinds", default="", help="only these kinds (names, commas)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "out" / "scorer_suite.json"
    )
    args = parser.parse_args(argv)
    chosen = small_kinds() if args.small else kinds()
    if args.kinds:
        chosen = [k for k in kinds() if k.name in args.kinds.split(",")]
    rows, scale = (600, 0.15) if args.small else (6_000, 1.0)
    results: list[Result] = []
    fallback: tuple[lgb.Booster, Scorer] | None = None
    biggest: tuple[int, Result] | None = None
    for kind in chosen:
        booster = train(kind, rows, max(4, int(kind.rounds * scale)))
        result, scorer = check(kind, booster)
        results.append(result)
        print(f"{kind.name:32} {result.scorer:13} {result.verify_s:6.2f} s  {result.reason[:90]}")
        if scorer is not None and (biggest is None or result.trees > biggest[0]):
            biggest = (result.trees, result)
            if scorer.uses_lignum:  # the same trees, scored by LightGBM: the fallback
                forced = replace(scorer.record, scorer="lightgbm", reason="forced")
                fallback = (booster, Scorer(booster, name=kind.name, record=forced))
    timing = time_fallback(*fallback, 200 if args.small else TIMED_CALLS) if fallback else {}
    report(results, timing, biggest[1] if biggest else None)
    write_json(
        args.out,
        {**stamp(), "results": [asdict(r) for r in results], "fallback_1_row": timing},
    )
    return 1 if any(r.problems for r in results) else 0


def report(results: list[Result], timing: dict[str, Any], biggest: Result | None) -> None:
    print()
    print(
        table(
            [
                (
                    r.kind,
                    r.trees,
                    r.scorer,
                    r.splits,
                    r.edge_rows,
                    r.verify_s,
                    r.verify_cpu_s,
                    r.silent,
                )
                for r in results
            ],
            ["kind", "trees", "scorer", "splits", "edge rows", "verify s", "cpu s", "silent diffs"],
        )
    )
    for r in results:
        if r.scorer in ("lightgbm", "refused"):
            print(f"{r.kind}: {r.scorer}: {r.reason}")
        for problem in r.problems:
            print(f"PROBLEM {r.kind}: {problem} {r.expected}")
    accepted = [r for r in results if r.scorer != "refused"]
    by_scorer: dict[str, int] = {}
    for r in results:
        by_scorer[r.scorer] = by_scorer.get(r.scorer, 0) + 1
    silent = sum(r.silent for r in accepted)
    print()
    print(f"models: {len(results)} ({', '.join(f'{k} {v}' for k, v in sorted(by_scorer.items()))})")
    print(f"silent differences on accepted models: {silent}")
    if biggest is not None:
        print(
            f"verification of the largest model ({biggest.kind}, {biggest.trees} trees): "
            f"{biggest.verify_s:.2f} s"
        )
    for mode, ways in timing.items():
        scorer, fast = ways["scorer"], ways["lightgbm_fast_path"]
        predict = ways["booster_predict"]
        print(
            f"fallback 1 row, {mode}: scorer p50 {scorer['p50_ms'] * 1e3:.1f} us, "
            f"p99 {scorer['p99_ms'] * 1e3:.1f} us; LightGBM fast path p50 "
            f"{fast['p50_ms'] * 1e3:.1f} us, p99 {fast['p99_ms'] * 1e3:.1f} us; Booster.predict "
            f"p50 {predict['p50_ms'] * 1e3:.1f} us"
        )
    for mode, ways in timing.items():
        ratio = ways["scorer"]["p50_ms"] / ways["lightgbm_fast_path"]["p50_ms"]
        print(f"ratio fallback/LightGBM fast path, 1 row {mode} p50: {ratio:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    sys.exit(main())
