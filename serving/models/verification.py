"""Which scorer serves a model: lignum where it is proven equal to `Booster.predict`, else LightGBM.

lignum (pylignum) walks LightGBM's trees from its own layout. It serves a model only once this
module has shown, for that model, that at every split every input goes where LightGBM sends it,
and that the sums and the output transform agree bit for bit; otherwise LightGBM serves it. The
verdict and its reason are a ScorerRecord, kept in the version's card at registration.

The proof, split by split (`prove`):
- Inputs that reach each split (split_inputs.py): the features tested on the path to it take
  values that meet the path (picked with LightGBM's rule, trees.py, and checked with LightGBM's
  own `pred_leaf` to really reach it); the split's own feature takes every value where two
  implementations of the split can part (`Tree.split_values`: the threshold, the next double
  either side, +-inf, NaN, +-0, and where they can matter the edges of LightGBM's zero band and
  +-the largest double; for a categorical split every code its bitset can test and what lies
  around them). Between those values a split's decision is constant in LightGBM (`x <=
  threshold` after its NaN and zero rules) and in lignum (`x >= threshold'`, or the bin of x,
  after the same rules), so agreeing on them is agreeing on every input. Splits of different
  trees share rows where their paths allow it (a row is walked through every tree anyway).
- Each input's leaf in each tree it was built for: from LightGBM (`pred_leaf`, one tree at a
  time) and from lignum, through a copy of the model whose leaves hold their own index and
  whose every tree is its own output (one raw-score call gives every tree's leaf). The copy
  keeps every split, so lignum builds the same kernel for it (binned or not) as for the model.
- Then the model itself, in lignum, scores a row to every leaf of every tree and a random
  sample, in batches, on one thread and one row at a time, against `Booster.predict` bit for
  bit: the leaf values, the order of the sum and the output transform (lignum does not apply
  `regression sqrt`, say).
Where lignum parts from LightGBM only on infinite inputs (a `threshold=inf` split: LightGBM
sends +inf left, lignum right), the leaves are compared again with +inf given to lignum as the
largest double (`lignum_input`); if every split then agrees, lignum serves the model so. (-inf
needs nothing: LightGBM writes no threshold below -inf, and both send it left everywhere.)

Invariants: never raises for a model lignum gets wrong or cannot read (that is a LightGBM
verdict with a reason); raises ModelError only for a model Carrara refuses to serve at all (more
than one score per row). The verdict depends only on the trees' text and the two libraries'
versions, which the record holds, so a load trusts a matching record instead of verifying again.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass

import lightgbm
import lignum
import numpy as np
from lightgbm import Booster

from serving.errors import ModelError
from serving.models.card import ScorerRecord
from serving.models.split_inputs import Inputs, build_inputs, random_inputs
from serving.models.trees import (
    CATEGORICAL,
    LARGEST,
    SPECIAL_VALUES,
    MalformedTreesError,
    Tree,
    parse_header,
    parse_trees,
)

log = logging.getLogger(__name__)
METHOD = "every-split-1"  # change it when the proof changes: old records are then re-verified
LIGNUM = "lignum"
LIGHTGBM = "lightgbm"
OUTPUT_CELLS = 4_000_000  # lignum scores per call of the leaf check (32 MB)
SAMPLE_ROWS = 2048  # random verification inputs the model also scores whole
SINGLE_ROWS = 64  # of those, scored one row at a time too
SEED = 0


@dataclass(frozen=True)
class Verified:
    record: ScorerRecord
    model: lignum.Model | None  # the model in lignum when the record says lignum


def library_versions() -> dict[str, str]:
    return {"lightgbm": lightgbm.__version__, "pylignum": lignum.__version__}


def served_iteration(booster: Booster) -> int:
    """The iterations `Booster.predict` uses by default: best_iteration if any, else all."""
    best: int = booster.best_iteration
    return best if best > 0 else -1


def check_model_kind(booster: Booster, label: str) -> None:
    """Raise ModelError, naming the objective, for a model with more than one score a row."""
    outputs = booster.num_model_per_iteration()
    if outputs != 1:
        header = parse_header(booster.model_to_string(num_iteration=1))
        raise ModelError(
            f"{label}: objective {header.get('objective', '?')!r} gives {outputs} scores per "
            "row; Carrara serves models with one (regression objectives, binary classification)"
        )


def trees_sha256(trees_text: str) -> str:
    return hashlib.sha256(trees_text.encode()).hexdigest()


def record_matches(record: ScorerRecord | None, trees_text: str) -> bool:
    """Whether `record` is the verdict `verify` would give now for these trees."""
    return (
        record is not None
        and record.method == METHOD
        and record.library_versions == library_versions()
        and record.trees_sha256 == trees_sha256(trees_text)
    )


def load_lignum(trees_text: str) -> lignum.Model:
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as file:
        file.write(trees_text)
        file.flush()
        return lignum.load(file.name, format="lightgbm")


def verify(booster: Booster, trees_text: str, label: str, model_sha256: str = "") -> Verified:
    """The verdict for `booster`, whose trees as `Booster.predict` uses them are `trees_text`
    (`booster.model_to_string(num_iteration=served_iteration(booster))`)."""
    started = time.perf_counter()
    facts = (trees_text, model_sha256, started)
    try:
        model = load_lignum(trees_text)
    except (RuntimeError, ValueError, OSError) as exc:  # OSError: the temporary file
        reason = f"lignum {lignum.__version__} cannot load it: {exc}"
        return Verified(_record(LIGHTGBM, reason, *facts), None)
    try:
        inputs, failure, inf_as_largest = prove(booster, trees_text, model)
    except MalformedTreesError as exc:
        reason = f"its trees could not be read to verify them: {exc}"
        return Verified(_record(LIGHTGBM, reason, *facts), None)
    if failure is not None:
        return Verified(_record(LIGHTGBM, failure, *facts, inputs), None)
    reason = (
        f"lignum {lignum.__version__} equals Booster.predict at every split ({inputs.splits:,} "
        f"splits of {len(inputs.bounds):,} trees, {len(inputs.matrix):,} input rows)"
    )
    if inputs.unreachable:
        reason += f"; {inputs.unreachable:,} splits no input can reach"
    if inf_as_largest:
        reason += "; lignum is given +inf as the largest double"
    record = _record(LIGNUM, reason, *facts, inputs, inf_as_largest)
    log.info("%s: %s (%.2f s)", label, reason, record.seconds)
    return Verified(record, model)


def scorer_record(model_text: str, label: str) -> ScorerRecord:
    """The record a registration keeps for `model_text` (a text LightGBM is known to parse);
    ModelError for a model kind Carrara does not serve."""
    booster = Booster(model_str=model_text)
    check_model_kind(booster, label)
    trees = booster.model_to_string(num_iteration=served_iteration(booster))
    return verify(booster, trees, label, hashlib.sha256(model_text.encode()).hexdigest()).record


def _record(
    scorer: str,
    reason: str,
    trees_text: str,
    model_sha256: str,
    started: float,
    inputs: Inputs | None = None,
    inf_as_largest: bool = False,
) -> ScorerRecord:
    return ScorerRecord(
        scorer=scorer,
        reason=reason,
        model_sha256=model_sha256,
        trees_sha256=trees_sha256(trees_text),
        library_versions=library_versions(),
        method=METHOD,
        inf_as_largest=inf_as_largest,
        splits=0 if inputs is None else inputs.splits,
        inputs=0 if inputs is None else len(inputs.matrix),
        seconds=round(time.perf_counter() - started, 3),
    )


def prove(
    booster: Booster, trees_text: str, model: lignum.Model
) -> tuple[Inputs, str | None, bool]:
    """(the inputs, what lignum gets wrong or None, whether lignum takes +inf as the largest
    double)."""
    width = booster.num_feature()
    trees = parse_trees(trees_text, width)
    inputs = build_inputs(trees, width)
    expected = lightgbm_leaves(booster, inputs, trees)
    missed = _unreached(trees, inputs, expected)
    if missed is not None:
        return inputs, missed, False
    try:
        copy = load_lignum(leaf_index_text(trees_text, len(trees)))
    except (RuntimeError, ValueError, OSError) as exc:
        return inputs, f"lignum cannot load the verification copy: {exc}", False
    if copy.uses_binned != model.uses_binned:
        return inputs, "lignum builds another kernel for the verification copy", False
    # A threshold=inf split sends +inf left in LightGBM, right in lignum: try the map first then.
    mapped = any(
        t == np.inf and not d & CATEGORICAL
        for tree in trees
        for t, d in zip(tree.threshold, tree.decision, strict=True)
    )
    wrong = _wrong_leaves(copy, inputs, expected, len(trees), mapped)
    if wrong.size and np.isinf(inputs.matrix[inputs.row[wrong]]).any(axis=1).all():
        other = _wrong_leaves(copy, inputs, expected, len(trees), not mapped)
        if not other.size:
            wrong, mapped = other, not mapped
    if wrong.size:
        at = int(wrong[0])
        tree = int(inputs.tree[at])
        row = inputs.matrix[inputs.row[at]]
        given = lignum_input(row[None, :], mapped)
        got = float(
            lignum_leaves(copy, given, np.zeros(1, np.int64), inputs.tree[at : at + 1], len(trees))[
                0
            ]
        )
        names = booster.feature_name()
        return inputs, _parting(trees[tree], tree, row, int(expected[at]), got, names), mapped
    random = random_inputs(trees, width, SAMPLE_ROWS, SEED)
    rows = np.vstack([_to_every_leaf(inputs, expected), random])
    return inputs, _scores_differ(booster, model, rows, mapped, trees_text), mapped


def lignum_input(matrix: np.ndarray, inf_as_largest: bool) -> np.ndarray:
    """What lignum is given for `matrix` (the Scorer gives it the same)."""
    return np.minimum(matrix, LARGEST) if inf_as_largest else matrix


def _wrong_leaves(
    copy: lignum.Model, inputs: Inputs, expected: np.ndarray, trees: int, inf_as_largest: bool
) -> np.ndarray:
    given = lignum_input(inputs.matrix, inf_as_largest)
    return np.flatnonzero(lignum_leaves(copy, given, inputs.row, inputs.tree, trees) != expected)


# --- each input's leaf, both ways ------------------------------------------------------------


def lightgbm_leaves(booster: Booster, inputs: Inputs, trees: list[Tree]) -> np.ndarray:
    """Per target, its row's leaf in its tree, from LightGBM's `pred_leaf` a tree at a time."""
    leaves = np.zeros(len(inputs.row), dtype=np.int64)
    for index, (start, end) in enumerate(inputs.bounds):
        if end > start:
            found = booster.predict(  # one thread: a pool costs more than these rows of a tree
                inputs.matrix[inputs.row[start:end]],
                start_iteration=index,
                num_iteration=1,
                pred_leaf=True,
                num_threads=1,
            )
            leaves[start:end] = np.asarray(found).reshape(-1)
            if leaves[start:end].max() >= trees[index].leaves:
                raise MalformedTreesError(f"LightGBM reports a leaf tree {index} does not have")
    return leaves


def _unreached(trees: list[Tree], inputs: Inputs, leaves: np.ndarray) -> str | None:
    """Which split a row built to reach it does not reach in LightGBM, if any (the path's
    values are picked with trees.py's copy of LightGBM's rule: this checks the copy)."""
    for index, (start, end) in enumerate(inputs.bounds):
        if end == start:
            continue
        first, last, position = _leaf_order(trees[index])
        split = inputs.split[start:end]
        at = position[leaves[start:end]]
        reached = (first[split] <= at) & (at < last[split])
        missed = np.flatnonzero(inputs.base[start:end] & ~reached)
        if missed.size:
            return (
                f"inputs built to reach split {int(split[missed[0]])} of tree {index} do not "
                "reach it in LightGBM, so the verification is incomplete"
            )
    return None


def _leaf_order(tree: Tree) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leaves numbered depth first: per split the [first, last) numbers of the leaves under
    it, and per leaf its number."""
    n = tree.splits
    first = np.zeros(n, dtype=np.int64)
    last = np.zeros(n, dtype=np.int64)
    position = np.zeros(tree.leaves, dtype=np.int64)
    counter = 0
    todo = [0]
    while todo:  # bounded: each node is pushed once, each split's end marker (n + split) once
        node = todo.pop()
        if node < 0:
            position[~node] = counter
            counter += 1
        elif node >= n:
            last[node - n] = counter
        else:
            first[node] = counter
            todo += (n + node, tree.right[node], tree.left[node])
    return first, last, position


def leaf_index_text(trees_text: str, trees: int) -> str:
    """The model with every leaf's value replaced by its index and every tree its own output
    (lignum gives tree t's score in column t): raw scores are then leaf indices."""
    lines = []
    header, ended = True, False
    outputs = 0
    for line in trees_text.splitlines():
        key = line.split("=", 1)[0]
        if line.startswith("Tree="):
            header = False
        elif line == "end of trees":
            ended = True
        elif header and key in ("num_class", "num_tree_per_iteration"):
            line, outputs = f"{key}={trees}", outputs + 1
        elif not header and not ended and key == "leaf_value":
            count = len(line.split("=", 1)[1].split())
            line = "leaf_value=" + " ".join(str(i) for i in range(count))
        lines.append(line)
    if outputs != 2:
        raise MalformedTreesError("no num_class and num_tree_per_iteration lines")
    return "\n".join(lines) + "\n"


def lignum_leaves(
    copy: lignum.Model, matrix: np.ndarray, row: np.ndarray, tree: np.ndarray, trees: int
) -> np.ndarray:
    """Per target, the leaf of its row (`row`) in its tree (`tree`), from lignum's leaf-index
    copy (as float64), scoring each row once."""
    leaves = np.empty(len(row))
    order = np.argsort(row, kind="stable")
    step = max(1, OUTPUT_CELLS // trees)
    for start in range(0, len(matrix), step):
        raw = np.asarray(copy.predict(matrix[start : start + step], raw_score=True, n_jobs=-1))
        raw = raw.reshape(-1, trees)
        low, high = np.searchsorted(row[order], (start, start + step))
        mine = order[low:high]
        leaves[mine] = raw[row[mine] - start, tree[mine]]
    return leaves


def _parting(
    tree: Tree, index: int, row: np.ndarray, expected: int, got: float, names: list[str]
) -> str:
    """Where LightGBM and lignum part for `row` in `tree`: the deepest split both paths share."""
    where = f"tree {index}"
    if got == int(got) and 0 <= got < tree.leaves:
        parents = tree.parents()
        ours, theirs = _path(parents, ~expected), _path(parents, ~int(got))
        shared = [a for a, b in zip(ours, theirs, strict=False) if a == b]
        split = shared[-1]
        feature = tree.feature[split]
        test = (
            f"bitset {int(tree.threshold[split])}"
            if tree.decision[split] & CATEGORICAL
            else f"threshold {tree.threshold[split]!r}"
        )
        where = (
            f"split {split} of tree {index} ({names[feature]}, {test}) for "
            f"{names[feature]} = {float(row[feature])!r}"
        )
    return f"lignum differs from LightGBM at {where}: leaf {got:g} instead of {expected}"


def _path(parents: dict[int, int], node: int) -> list[int]:
    """The splits from the root down to `node`."""
    path = []
    while node in parents:  # bounded: a parsed tree has no cycles
        node = parents[node]
        path.append(node)
    return path[::-1]


# --- whole scores ----------------------------------------------------------------------------


def _to_every_leaf(inputs: Inputs, leaves: np.ndarray) -> np.ndarray:
    """A row to every leaf of every tree (that some input reaches), and a row of each special
    value in every column (a model without splits has only those)."""
    key = inputs.tree * (int(leaves.max(initial=0)) + 1) + leaves
    chosen = inputs.matrix[inputs.row[np.unique(key, return_index=True)[1]]]
    width = inputs.matrix.shape[1]
    return np.vstack([chosen, np.repeat(np.array(SPECIAL_VALUES)[:, None], width, axis=1)])


def _scores_differ(
    booster: Booster, model: lignum.Model, rows: np.ndarray, inf_as_largest: bool, trees_text: str
) -> str | None:
    expected = np.asarray(booster.predict(rows, num_iteration=served_iteration(booster)))
    given = lignum_input(rows, inf_as_largest)
    single = [model.predict(given[i : i + 1], n_jobs=1) for i in range(min(SINGLE_ROWS, len(rows)))]
    for how, got in (
        ("in batches", model.predict(given, n_jobs=-1)),
        ("on one thread", model.predict(given, n_jobs=1)),
        ("one row at a time", np.concatenate(single)),
    ):
        scores = np.asarray(got, dtype=np.float64)
        wrong = np.flatnonzero(scores.view(np.int64) != expected[: len(scores)].view(np.int64))
        if wrong.size:
            at = int(wrong[0])
            objective = parse_header(trees_text).get("objective", "?")
            return (
                f"lignum's scores differ from Booster.predict's {how} (objective {objective!r}) "
                f"though every leaf agrees: {float(scores[at])!r} instead of "
                f"{float(expected[at])!r}"
            )
    return None
