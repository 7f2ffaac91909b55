"""The scorer equals Booster.predict bit for bit, one row or many, NaN and infinities included:
through lignum where it is proven exact, through LightGBM itself (its single-row fast path for
one row) everywhere else; the verdict is recorded and reused; multi-output models are refused."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from serving.errors import ModelError
from serving.models import scorer as scorer_module
from serving.models.scorer import Scorer
from serving.models.trees import LARGEST, ZERO_BAND

N_FEATURES = 6
EDGES = (np.nan, np.inf, -np.inf, 0.0, -0.0, ZERO_BAND, -ZERO_BAND, LARGEST, -LARGEST)


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2_000, N_FEATURES))
    x[rng.random(x.shape) < 0.05] = np.nan
    x[:, 5] = rng.integers(0, 4, len(x))  # a categorical column
    y = np.nan_to_num(x[:, 0]) * 3 + np.sin(np.nan_to_num(x[:, 1])) + (x[:, 5] == 2) * 2
    data = lgb.Dataset(x, y, categorical_feature=[5], params={"verbose": -1})
    valid = lgb.Dataset(x[:300], y[:300], reference=data)
    params = {"objective": "regression", "verbose": -1, "seed": 1, "num_leaves": 15}
    return lgb.train(
        params,
        data,
        num_boost_round=80,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(5, verbose=False)],
    )


@pytest.fixture(scope="module")
def scorer(booster: lgb.Booster) -> Scorer:
    return Scorer(booster)


@pytest.fixture(scope="module")
def linear() -> lgb.Booster:
    """A model lignum refuses (linear trees): LightGBM scores it."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 3))
    params = {"objective": "regression", "verbose": -1, "linear_tree": True}
    return lgb.train(params, lgb.Dataset(x, x[:, 0] * 2 + x[:, 1]), num_boost_round=10)


@pytest.fixture(scope="module")
def inf_threshold() -> lgb.Booster:
    """A feature missing in half the rows: LightGBM writes `threshold=inf` splits (all values
    left, NaN right), where lignum sends +inf right and LightGBM left."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3_000, 3))
    x[rng.random(len(x)) < 0.5, 0] = np.nan
    y = (np.isnan(x[:, 0]) * 3 + x[:, 1] > 1.5).astype(float)
    params = {"objective": "cross_entropy", "verbose": -1, "num_leaves": 7}
    return lgb.train(params, lgb.Dataset(x, y), num_boost_round=20)


values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=True, width=64),
    st.sampled_from(EDGES),
)


def test_a_plain_model_is_scored_by_lignum(scorer: Scorer) -> None:
    assert scorer.uses_lignum  # else the equality tests below prove little
    assert scorer.record.scorer == "lignum"
    assert "every split" in scorer.record.reason
    assert scorer.record.splits > 0


@settings(max_examples=300, deadline=None)
@given(row=arrays(np.float64, (1, N_FEATURES), elements=values))
def test_single_row_equals_booster_predict(
    booster: lgb.Booster, scorer: Scorer, row: np.ndarray
) -> None:
    np.testing.assert_array_equal(scorer.score(row), booster.predict(row))


@settings(max_examples=50, deadline=None)
@given(
    rows=st.integers(2, 40).flatmap(lambda n: arrays(np.float64, (n, N_FEATURES), elements=values))
)
def test_batch_equals_booster_predict(
    booster: lgb.Booster, scorer: Scorer, rows: np.ndarray
) -> None:
    np.testing.assert_array_equal(scorer.score(rows), booster.predict(rows))


def test_best_iteration_is_honoured_like_booster_predict(booster: lgb.Booster) -> None:
    early = lgb.Booster(model_str=booster.model_to_string())
    early.best_iteration = 3
    row = np.ones((1, N_FEATURES))
    fast = Scorer(early).score(row)[0]
    assert fast == early.predict(row)[0] == early.predict(row, num_iteration=3)[0]
    assert fast != early.predict(row, num_iteration=-1)[0]


def test_wrong_width_is_refused(scorer: Scorer) -> None:
    with pytest.raises(ValueError, match=f"expected \\(rows, {N_FEATURES}\\)"):
        scorer.score(np.zeros((1, N_FEATURES + 1)))


def test_no_rows_give_no_scores(scorer: Scorer, linear: lgb.Booster) -> None:
    assert scorer.score(np.zeros((0, N_FEATURES))).shape == (0,)
    assert Scorer(linear).score(np.zeros((0, 3))).shape == (0,)


@pytest.mark.parametrize("kind", ["lignum", "lightgbm"])
def test_threads_scoring_at_once_each_get_their_own_rows_score(
    booster: lgb.Booster, scorer: Scorer, linear: lgb.Booster, kind: str
) -> None:
    model, used = (booster, scorer) if kind == "lignum" else (linear, Scorer(linear))
    assert used.uses_lignum == (kind == "lignum")
    rows = np.random.default_rng(3).normal(size=(64, model.num_feature()))
    expected = model.predict(rows)
    barrier = threading.Barrier(4)

    def score_all(offset: int) -> list[float]:
        barrier.wait()
        order = [(offset + i) % len(rows) for i in range(len(rows) * 20)]
        return [used.score(rows[i : i + 1])[0] - expected[i] for i in order]

    with ThreadPoolExecutor(4) as pool:
        diffs = [d for result in pool.map(score_all, range(4)) for d in result]
    assert max(map(abs, diffs)) == 0.0


def test_a_model_lignum_refuses_is_scored_by_lightgbm(
    linear: lgb.Booster, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="serving.models.scorer"):
        scorer = Scorer(linear, name="eta:7")
    assert not scorer.uses_lignum
    assert scorer.record.scorer == "lightgbm"
    assert "linear trees" in scorer.record.reason
    assert "eta:7: scored by LightGBM itself" in caplog.text


@settings(max_examples=300, deadline=None)
@given(row=arrays(np.float64, (1, 3), elements=values))
def test_lightgbm_single_row_fast_path_equals_booster_predict(
    linear: lgb.Booster, row: np.ndarray
) -> None:
    scorer = _lightgbm_scorer(linear)
    np.testing.assert_array_equal(scorer.score(row), linear.predict(row))
    np.testing.assert_array_equal(scorer.score(np.vstack([row, row])), linear.predict([row[0]] * 2))


_SCORERS: dict[int, Scorer] = {}


def _lightgbm_scorer(model: lgb.Booster) -> Scorer:
    if id(model) not in _SCORERS:
        _SCORERS[id(model)] = Scorer(model)
    return _SCORERS[id(model)]


def test_infinity_at_a_threshold_inf_split_is_scored_as_booster_predict(
    inf_threshold: lgb.Booster,
) -> None:
    thresholds = [x for x in inf_threshold.model_to_string().splitlines() if "threshold=" in x]
    assert any("inf" in line.split("=")[1].split() for line in thresholds)
    scorer = Scorer(inf_threshold)
    assert scorer.uses_lignum
    assert scorer.record.inf_as_largest
    rows = np.array([[np.inf, 0.0, 0.0], [-np.inf, np.inf, np.nan], [LARGEST, 1.0, -np.inf]])
    np.testing.assert_array_equal(scorer.score(rows), inf_threshold.predict(rows))
    for row in rows:
        assert scorer.score(row[None, :])[0] == inf_threshold.predict(row[None, :])[0]


def test_a_multiclass_model_is_refused_naming_its_objective() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 2))
    params = {"objective": "multiclass", "num_class": 3, "verbose": -1}
    multi = lgb.train(params, lgb.Dataset(x, rng.integers(0, 3, 300)), num_boost_round=3)
    with pytest.raises(ModelError, match="objective 'multiclass num_class:3' gives 3 scores"):
        Scorer(multi, name="zones:2")


def test_a_matching_record_is_trusted_without_verifying_again(
    booster: lgb.Booster, scorer: Scorer, linear: lgb.Booster, monkeypatch: pytest.MonkeyPatch
) -> None:
    lightgbm_record = Scorer(linear).record
    monkeypatch.setattr(scorer_module, "verify", _must_not_verify)
    assert Scorer(booster, record=scorer.record).uses_lignum
    assert not Scorer(linear, record=lightgbm_record).uses_lignum


def _must_not_verify(*_: object) -> None:
    raise AssertionError("verified again")


@pytest.mark.parametrize(
    "change",
    [
        {"trees_sha256": "0" * 64},
        {"library_versions": {"lightgbm": "0.1", "pylignum": "0.1"}},
        {"method": "sampled-probe-0"},
    ],
)
def test_a_record_that_does_not_match_is_verified_again(
    linear: lgb.Booster, change: dict[str, object]
) -> None:
    record = Scorer(linear).record
    forged = replace(record, scorer="lignum", reason="forged", **change)  # type: ignore[arg-type]
    scorer = Scorer(linear, record=forged)
    assert not scorer.uses_lignum
    assert scorer.record.reason != "forged"


def test_load_scorer_scores_a_model_file_as_the_server_does(
    tmp_path: Path, booster: lgb.Booster
) -> None:
    from serving import load_scorer

    path = tmp_path / "model.txt"
    path.write_text(booster.model_to_string())
    loaded = load_scorer(path)
    rows = np.random.default_rng(5).normal(size=(20, N_FEATURES))
    rows[0, :] = np.inf
    np.testing.assert_array_equal(loaded.score(rows), booster.predict(rows))
    assert loaded.score(rows[:1])[0] == booster.predict(rows[:1])[0]
    assert loaded.record.scorer == "lignum"


def test_load_scorer_refuses_a_malformed_file_without_dying(tmp_path: Path) -> None:
    from serving import load_scorer

    path = tmp_path / "model.txt"
    path.write_text("tree\nversion=v4\nnum_class=1\nTree=0\nnum_leaves=3\nsplit_feature=0 9\n")
    with pytest.raises(ModelError, match="malformed"):
        load_scorer(path)
