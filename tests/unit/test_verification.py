"""The verification: LightGBM's rule copied exactly, inputs that reach every split with every
value that matters there, leaves compared tree by tree, and every way lignum can be wrong
ending in a LightGBM verdict with a reason."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.models import verification
from serving.models.split_inputs import build_inputs
from serving.models.trees import (
    LARGEST,
    SPECIAL_VALUES,
    MalformedTreesError,
    Tree,
    parse_trees,
)
from serving.models.verification import (
    _leaf_order,
    _wrong_leaves,
    leaf_index_text,
    lightgbm_leaves,
    lignum_leaves,
    load_lignum,
    verify,
)

WIDTH = 4


def _train(params: dict[str, object], rounds: int = 15, seed: int = 0) -> lgb.Booster:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3_000, WIDTH))
    x[:, 1] = np.where(rng.random(len(x)) < 0.3, 0.0, x[:, 1])  # zeros
    x[rng.random(len(x)) < 0.4, 2] = np.nan  # missing in many rows: threshold=inf splits
    x[:, 3] = rng.integers(0, 70, len(x))  # categorical, more than 64 levels
    x[rng.random(len(x)) < 0.05, 3] = np.nan
    y = np.nan_to_num(x[:, 0]) + (x[:, 1] == 0) + np.isnan(x[:, 2]) + (x[:, 3] % 5 == 1)
    full = {"objective": "regression", "verbose": -1, "num_leaves": 15, "seed": 1, **params}
    return lgb.train(full, lgb.Dataset(x, y, categorical_feature=[3]), rounds)


MISSING_KINDS: dict[str, dict[str, object]] = {
    "nan": {},
    "zero": {"zero_as_missing": True},
    "none": {"use_missing": False},
    "categorical": {"max_cat_threshold": 40, "cat_smooth": 1.0, "min_data_per_group": 5},
}


@pytest.fixture(scope="module", params=sorted(MISSING_KINDS))
def model(request: pytest.FixtureRequest) -> lgb.Booster:
    return _train(MISSING_KINDS[request.param])


_PARSED: dict[int, list[Tree]] = {}


def _parsed(model: lgb.Booster) -> list[Tree]:
    if id(model) not in _PARSED:
        _PARSED[id(model)] = parse_trees(model.model_to_string(), WIDTH)
    return _PARSED[id(model)]


def _walk(tree: Tree, row: np.ndarray) -> int:
    node = 0
    while node >= 0:
        node = (
            tree.left[node]
            if tree.goes_left(node, float(row[tree.feature[node]]))
            else tree.right[node]
        )
    return ~node


interesting = st.one_of(
    st.sampled_from(SPECIAL_VALUES),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(-3, 140).map(float),
    st.floats(-2, 80),
)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(interesting, min_size=WIDTH, max_size=WIDTH))
def test_the_copy_of_lightgbms_rule_sends_every_value_where_lightgbm_does(
    model: lgb.Booster, values: list[float]
) -> None:
    trees = _parsed(model)
    row = np.array([values])
    leaves = model.predict(row, pred_leaf=True)[0]
    assert [_walk(tree, row[0]) for tree in trees] == list(leaves)


def test_every_split_is_reached_with_each_of_its_values(model: lgb.Booster) -> None:
    trees = parse_trees(model.model_to_string(), WIDTH)
    inputs = build_inputs(trees, WIDTH)
    leaves = lightgbm_leaves(model, inputs, trees)
    assert inputs.splits == sum(t.splits for t in trees) - inputs.unreachable
    for index, tree in enumerate(trees):
        first, last, position = _leaf_order(tree)
        start, end = inputs.bounds[index]
        for split in range(tree.splits):
            mine = np.flatnonzero(inputs.split[start:end] == split) + start
            if not mine.size:
                continue
            at = position[leaves[mine]]
            reached = mine[(first[split] <= at) & (at < last[split])]
            assert inputs.base[mine[0]]  # first the row with the path's own values
            assert mine[0] in reached
            seen = inputs.matrix[inputs.row[reached], tree.feature[split]]
            wanted = [v for v in tree.split_values(split) if _on_path(tree, split, v)]
            assert {_key(v) for v in wanted} <= {_key(v) for v in seen}, (index, split)


def test_splits_of_different_trees_share_rows() -> None:
    trees = parse_trees(_train(MISSING_KINDS["categorical"], rounds=30).model_to_string(), WIDTH)
    inputs = build_inputs(trees, WIDTH)
    assert len(inputs.matrix) * 3 < len(inputs.row)  # a row tests splits of several trees


def _on_path(tree: Tree, split: int, value: float) -> bool:
    """Whether an input with `value` at the split's feature can reach `split`."""
    parents = tree.parents()
    node = split
    while node in parents:
        parent = parents[node]
        if tree.feature[parent] == tree.feature[split]:
            went_left = tree.left[parent] == node
            if tree.goes_left(parent, value) != went_left:
                return False
        node = parent
    return True


def _key(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value))


def test_infinities_and_nan_and_zeros_reach_every_split_whose_path_allows_them(
    model: lgb.Booster,
) -> None:
    trees = parse_trees(model.model_to_string(), WIDTH)
    inputs = build_inputs(trees, WIDTH)
    rows = inputs.matrix[inputs.row[~inputs.base]]
    features = np.array(
        [trees[t].feature[s] for t, s in zip(inputs.tree, inputs.split, strict=True)]
    )[~inputs.base]
    at_split = rows[np.arange(len(rows)), features]
    for value in (math.inf, -math.inf, 0.0):
        assert (at_split == value).sum() >= inputs.splits // 2
    assert np.signbit(at_split[at_split == 0.0]).any()  # -0.0 too
    assert np.isnan(at_split).sum() >= inputs.splits


def test_the_leaf_index_copy_gives_each_trees_leaf_as_lightgbm(model: lgb.Booster) -> None:
    text = model.model_to_string()
    trees = parse_trees(text, WIDTH)
    copy = load_lignum(leaf_index_text(text, len(trees)))
    rows = np.random.default_rng(1).normal(size=(50, WIDTH)) * 2
    rows[:, 3] = np.arange(50) % 70
    expected = np.asarray(model.predict(rows, pred_leaf=True))
    for tree in range(len(trees)):
        got = lignum_leaves(copy, rows, np.arange(50), np.full(50, tree), len(trees))
        np.testing.assert_array_equal(got, expected[:, tree])


def test_a_threshold_inf_split_is_caught_and_lignum_given_inf_as_the_largest_double() -> None:
    model = _train({})
    text = model.model_to_string()
    assert _has_inf_threshold(text)
    trees = parse_trees(text, WIDTH)
    inputs = build_inputs(trees, WIDTH)
    expected = lightgbm_leaves(model, inputs, trees)
    copy = load_lignum(leaf_index_text(text, len(trees)))
    wrong = _wrong_leaves(copy, inputs, expected, len(trees), inf_as_largest=False)
    assert wrong.size  # as lignum 0.3 is: +inf goes right at threshold=inf
    assert (inputs.matrix[inputs.row[wrong]] == np.inf).any(axis=1).all()
    assert not _wrong_leaves(copy, inputs, expected, len(trees), inf_as_largest=True).size
    record = verify(model, text, "m").record
    assert (record.scorer, record.inf_as_largest) == ("lignum", True)


def _has_inf_threshold(text: str) -> bool:
    return any(
        "inf" in line.split("=", 1)[1].split()
        for line in text.splitlines()
        if line.startswith("threshold=")
    )


def test_a_split_lignum_gets_wrong_either_way_means_lightgbm_naming_the_split() -> None:
    model = _train({})
    text = model.model_to_string()
    # A split at the largest double: +inf mapped to it goes left there; LightGBM sends +inf
    # right. With the threshold=inf splits, neither way of giving lignum +inf is exact.
    lines = text.splitlines()
    at = next(
        i
        for i, line in enumerate(lines)
        if line.startswith("threshold=") and "inf" not in line and line.count(" ") > 2
    )
    values = lines[at].split("=", 1)[1].split()
    tree_start = max(i for i in range(at) if lines[i].startswith("Tree="))
    decision = next(
        lines[i] for i in range(tree_start, len(lines)) if lines[i].startswith("decision_type=")
    )
    split = next(i for i, d in enumerate(decision.split("=")[1].split()) if not int(d) & 1)
    values[split] = repr(LARGEST)
    lines[at] = "threshold=" + " ".join(values)
    kept = [line for line in lines if not line.startswith("tree_sizes=")]  # sizes changed
    edited = lgb.Booster(model_str="\n".join(kept) + "\n")
    record = verify(edited, edited.model_to_string(), "m").record
    assert record.scorer == "lightgbm"
    assert "lignum differs from LightGBM at split" in record.reason
    assert "= inf" in record.reason or "= -inf" in record.reason or "1.797" in record.reason


def test_an_output_transform_lignum_lacks_means_lightgbm() -> None:
    model = _train({"reg_sqrt": True})
    record = verify(model, model.model_to_string(), "m").record
    assert record.scorer == "lightgbm"
    assert "objective 'regression sqrt'" in record.reason
    assert "every leaf agrees" in record.reason


def test_a_model_lignum_cannot_load_means_lightgbm() -> None:
    model = _train({"boosting": "rf", "bagging_fraction": 0.7, "bagging_freq": 1})
    record = verify(model, model.model_to_string(), "m").record
    assert record.scorer == "lightgbm"
    assert "random forest" in record.reason


def test_the_record_names_what_it_verified() -> None:
    model = _train({})
    text = model.model_to_string()
    record = verify(model, text, "m", model_sha256="ab" * 32).record
    assert record.model_sha256 == "ab" * 32
    assert record.trees_sha256 == verification.trees_sha256(text)
    assert record.library_versions == verification.library_versions()
    assert set(record.library_versions) == {"lightgbm", "pylignum"}
    assert record.method == verification.METHOD
    assert record.splits > 0
    assert record.inputs > record.splits
    assert verification.record_matches(record, text)
    assert not verification.record_matches(record, text + "\n")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("left_child=", "left_child=5 ", 1), "differ in length"),
        (lambda t: re.sub(r"split_feature=\d+", "split_feature=99", t, count=1), "not a column"),
        (lambda t: t.replace("num_leaves=15", "num_leaves=zz", 1), "invalid literal"),
    ],
)
def test_malformed_trees_are_refused(edit: Callable[[str], str], message: str) -> None:
    text = _train({}, rounds=2).model_to_string()
    with pytest.raises(MalformedTreesError, match=message):
        parse_trees(edit(text), WIDTH)


def test_children_that_do_not_form_a_tree_are_refused() -> None:
    text = _train({}, rounds=1).model_to_string()
    line = next(x for x in text.splitlines() if x.startswith("left_child="))
    children = line.split("=")[1].split()
    cyclic = "left_child=" + " ".join(["0", *children[1:]])  # the root its own child
    with pytest.raises(MalformedTreesError, match="do not form a tree"):
        parse_trees(text.replace(line, cyclic), WIDTH)
