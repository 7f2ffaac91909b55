"""The scorer equals Booster.predict bit for bit, one row or many; what lignum cannot score
exactly is scored by LightGBM itself."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from serving.models.scorer import Scorer, probe_rows

N_FEATURES = 6


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


finite_or_missing = st.one_of(
    st.floats(allow_nan=False, allow_infinity=True, width=64), st.just(float("nan"))
)


def test_a_plain_model_is_scored_by_lignum(scorer: Scorer) -> None:
    assert scorer.exact_fast_path is not None  # else the equality tests below prove little


@settings(max_examples=300, deadline=None)
@given(row=arrays(np.float64, (1, N_FEATURES), elements=finite_or_missing))
def test_single_row_equals_booster_predict(
    booster: lgb.Booster, scorer: Scorer, row: np.ndarray
) -> None:
    np.testing.assert_array_equal(scorer.score(row), booster.predict(row))


@settings(max_examples=50, deadline=None)
@given(
    rows=st.integers(2, 40).flatmap(
        lambda n: arrays(np.float64, (n, N_FEATURES), elements=finite_or_missing)
    )
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


def test_threads_scoring_at_once_each_get_their_own_rows_score(
    booster: lgb.Booster, scorer: Scorer
) -> None:
    rows = np.random.default_rng(3).normal(size=(64, N_FEATURES))
    expected = booster.predict(rows)
    barrier = threading.Barrier(4)

    def score_all(offset: int) -> list[float]:
        barrier.wait()
        order = [(offset + i) % len(rows) for i in range(len(rows) * 20)]
        return [scorer.score(rows[i : i + 1])[0] - expected[i] for i in order]

    with ThreadPoolExecutor(4) as pool:
        diffs = [d for result in pool.map(score_all, range(4)) for d in result]
    assert max(map(abs, diffs)) == 0.0


def test_probe_rows_sit_on_and_beside_every_threshold(booster: lgb.Booster) -> None:
    text = booster.model_to_string()
    probe = probe_rows(text, N_FEATURES)
    tree = booster.dump_model()["tree_info"][0]["tree_structure"]
    while "split_feature" in tree and tree["decision_type"] != "<=":
        tree = tree["left_child"]  # the first numerical split of the first tree
    column, threshold = probe[:, tree["split_feature"]], tree["threshold"]
    for value in (np.nextafter(threshold, -np.inf), threshold, np.nextafter(threshold, np.inf)):
        assert (column == value).any(), value
    assert np.isnan(column).any()
    assert np.isinf(column).any()


def test_probe_rows_hold_every_category_code_a_categorical_split_can_test(
    booster: lgb.Booster,
) -> None:
    categories = probe_rows(booster.model_to_string(), N_FEATURES)[:, 5]
    assert set(range(33)) <= set(categories.tolist())  # 4 levels: one 32-bit word, and one more


def test_a_model_lignum_refuses_is_scored_by_lightgbm(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 3))
    params = {"objective": "regression", "verbose": -1, "linear_tree": True}
    linear = lgb.train(params, lgb.Dataset(x, x[:, 0] * 2 + x[:, 1]), num_boost_round=10)
    with caplog.at_level(logging.WARNING, logger="serving.models.scorer"):
        scorer = Scorer(linear, name="eta:7")
    assert scorer.exact_fast_path is None
    assert "eta:7: scored by LightGBM itself" in caplog.text
    np.testing.assert_array_equal(scorer.score(x[:1]), linear.predict(x[:1]))
    np.testing.assert_array_equal(scorer.score(x[:50]), linear.predict(x[:50]))
