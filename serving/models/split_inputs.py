"""Inputs that reach every split of every tree, with the split's feature on each value where
the split can send an input elsewhere; and random inputs over the values a model tests.

Concern: the rows the verification (verification.py) scores both ways, and what each row is
built to test (its targets: a split of a tree). A split is reached when every feature tested on
the path to it takes a value that goes the path's way at each of its splits there; such a value
is searched among those splits' own `Tree.split_values`, which hold one if any value does (the
decisions change only at those values). A child that no value reaches is skipped with its
subtree and counted.

A numerical split gets its own rows. Categorical splits, a row per category code, share rows
across trees: a row is walked through every tree, so splits of one feature in different trees
whose paths some values meet together (searched the same way, over all their conditions) are
tested by the same rows, the feature running through the union of their codes.

Invariants: every split some input reaches has a target on a row with each of its
`split_values` and, marked `base`, one on a row with the path's own values; a feature that no
path of a row's targets tests is NaN (the walks through other trees are then cheap; where a
row goes in a tree it does not target does not matter to the proof); targets are grouped by
tree (`Inputs.bounds`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from serving.models.trees import CATEGORICAL, SPECIAL_VALUES, Tree

Path = tuple[tuple[int, bool], ...]  # (split, goes left) on one feature, root first
# Groups a split tries before it starts one: few for numerical splits (many, a few rows
# each), more for categorical ones (few, a row per code: sharing them pays most).
SCAN = {False: 8, True: 32}
MAX_SHARED = 64  # splits a group of shared rows holds at most


@dataclass(frozen=True)
class Inputs:
    """Verification rows and their targets (a target: a row, a tree and a split of it)."""

    matrix: np.ndarray  # (rows, width) float64
    row: np.ndarray  # per target: its row of `matrix`
    tree: np.ndarray  # per target: the tree
    split: np.ndarray  # per target: the split of that tree the row is built to reach
    base: np.ndarray  # per target: True for the row with the path's own values
    bounds: tuple[tuple[int, int], ...]  # per tree: its targets [start, end)
    splits: int  # splits some input reaches
    unreachable: int  # splits no input reaches (the conditions on their path contradict)


@dataclass(frozen=True)
class _Block:
    """The rows built for one split: the path's values, then each of the split's values."""

    tree: int
    split: int
    path_values: dict[int, float]  # feature -> a value that goes the path's way
    feature: int
    values: tuple[float, ...]
    conditions: dict[int, Path]  # feature -> the path's conditions on it
    categorical: bool


@dataclass
class _Shared:
    """Categorical splits of one feature in different trees, tested by the same rows."""

    feature: int
    trees: set[int] = field(default_factory=set)
    conditions: dict[int, list[tuple[Tree, Path]]] = field(default_factory=dict)
    values: dict[int, float] = field(default_factory=dict)  # feature -> meets `conditions`
    members: list[_Block] = field(default_factory=list)

    def admit(self, block: _Block, tree: Tree) -> bool:
        """Add `block` if some values meet its path and every member's together."""
        if block.tree in self.trees or len(self.members) >= MAX_SHARED:
            return False
        updates: dict[int, float] = {}
        for feature, path in block.conditions.items():
            if feature == self.feature:
                continue
            value, own = self.values.get(feature), block.path_values[feature]
            if value is None:
                updates[feature] = own
            elif value != own and not all(tree.goes_left(s, value) == w for s, w in path):
                if not _meets(self.conditions[feature], own):
                    return False  # (a search for a third value costs more than it saves)
                updates[feature] = own
        for feature, path in block.conditions.items():
            if feature != self.feature:
                self.conditions.setdefault(feature, []).append((tree, path))
        self.values.update(updates)
        self.trees.add(block.tree)
        self.members.append(block)
        return True


def build_inputs(trees: list[Tree], width: int) -> Inputs:
    """For every split some input reaches: a row with the path's values, and rows with each
    value of `Tree.split_values` on the split's feature."""
    blocks: list[_Block] = []
    unreachable = 0
    for index, tree in enumerate(trees):
        found, skipped = _reaching_blocks(tree, index)
        blocks += found
        unreachable += skipped
    matrix, (row, of_tree, split, base) = _shared_rows(_share(blocks, trees), width)
    order = np.argsort(of_tree, kind="stable")
    ends = np.searchsorted(of_tree[order], np.arange(len(trees)), side="right")
    return Inputs(
        matrix=matrix,
        row=row[order],
        tree=of_tree[order],
        split=split[order],
        base=base[order],
        bounds=tuple(zip((ends - np.diff(ends, prepend=0)).tolist(), ends.tolist(), strict=True)),
        splits=len(blocks),
        unreachable=unreachable,
    )


Targets = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # row, tree, split, base


def _share(blocks: list[_Block], trees: list[Tree]) -> list[_Shared]:
    """First fit among the last SCAN groups of the block's feature; else a new group."""
    groups: dict[tuple[int, bool], list[_Shared]] = {}
    for block in blocks:
        mine = groups.setdefault((block.feature, block.categorical), [])
        tree = trees[block.tree]
        if not any(group.admit(block, tree) for group in mine[-SCAN[block.categorical] :]):
            mine.append(_Shared(block.feature))
            mine[-1].admit(block, tree)
    return [group for mine in groups.values() for group in mine]


def _shared_rows(groups: list[_Shared], width: int) -> tuple[np.ndarray, Targets]:
    """Per group, a row per value of the union of its members' values on its feature (their
    path values there first); a member targets the rows of its own values."""
    matrices: list[np.ndarray] = []
    rows: list[int] = []
    trees: list[int] = []
    splits: list[int] = []
    counts: list[int] = []
    start = 0
    for group in groups:
        union: dict[object, float] = {}
        for block in group.members:
            own = block.path_values.get(group.feature, math.nan)
            union.setdefault(_key(own), own)
        distinct = {block.values: None for block in group.members}  # splits share value tuples
        for values in distinct:
            for value in values:
                union.setdefault(_key(value), value)
        position = {key: start + i for i, key in enumerate(union)}
        at = {values: [position[_key(v)] for v in values] for values in distinct}
        for block in group.members:
            rows.append(position[_key(block.path_values.get(group.feature, math.nan))])
            rows += at[block.values]
            trees.append(block.tree)
            splits.append(block.split)
            counts.append(1 + len(block.values))
        matrix = np.full((len(union), width), math.nan)
        if group.values:
            matrix[:, list(group.values)] = list(group.values.values())
        matrix[:, group.feature] = list(union.values())
        matrices.append(matrix)
        start += len(union)
    sizes = np.array(counts, dtype=np.int64)
    base = np.zeros(int(sizes.sum()), dtype=bool)
    base[np.cumsum(sizes) - sizes] = True
    return np.vstack([np.zeros((0, width)), *matrices]), (
        np.array(rows, dtype=np.int64),
        np.repeat(np.array(trees, dtype=np.int64), sizes),
        np.repeat(np.array(splits, dtype=np.int64), sizes),
        base,
    )


def _key(value: float) -> object:
    """Tells every value apart, -0.0 from 0.0 too; NaN is one key."""
    return "nan" if value != value else (value, math.copysign(1.0, value))


def _meets(conditions: list[tuple[Tree, Path]], x: float) -> bool:
    return all(tree.goes_left(s, x) == left for tree, path in conditions for s, left in path)


def random_inputs(trees: list[Tree], width: int, rows: int, seed: int) -> np.ndarray:
    """Rows whose every value is one of the model's thresholds, codes or SPECIAL_VALUES for
    that feature, drawn at random: varied paths through every tree at once."""
    pools: list[set[float]] = [set(SPECIAL_VALUES) for _ in range(width)]
    for tree in trees:
        for split, feature in enumerate(tree.feature):
            if tree.decision[split] & CATEGORICAL:
                pools[feature].update(range(32 * len(tree.category_words(split))))
            else:
                pools[feature].add(tree.threshold[split])
    rng = np.random.default_rng(seed)
    matrix = np.empty((rows, width))
    for feature, pool in enumerate(pools):
        values = np.array(sorted(pool, key=repr), dtype=np.float64)  # repr: NaN sorts too
        matrix[:, feature] = values[rng.integers(0, len(values), rows)]
    return matrix


def _reaching_blocks(tree: Tree, index: int) -> tuple[list[_Block], int]:
    """Depth first from the root, carrying per feature the path's conditions on it and a
    value that meets them all; a child no value reaches is skipped with its subtree."""
    if tree.splits == 0:
        return [], 0
    blocks: list[_Block] = []
    unreachable = 0
    values_of: dict[int, tuple[float, ...]] = {}
    todo: list[tuple[int, dict[int, Path], dict[int, float]]] = [(0, {}, {})]
    while todo:  # bounded: a parsed tree has no cycles
        split, conditions, chosen = todo.pop()
        feature = tree.feature[split]
        values = _values(tree, split, values_of)
        categorical = bool(tree.decision[split] & CATEGORICAL)
        blocks.append(_Block(index, split, chosen, feature, values, conditions, categorical))
        for child, left in ((tree.left[split], True), (tree.right[split], False)):
            if child < 0:
                continue
            path = (*conditions.get(feature, ()), (split, left))
            value = _satisfying(tree, path, values_of)
            if value is None:
                unreachable += tree.subtree_splits(child)
                continue
            todo.append((child, {**conditions, feature: path}, {**chosen, feature: value}))
    return blocks, unreachable


def _satisfying(tree: Tree, path: Path, values_of: dict[int, tuple[float, ...]]) -> float | None:
    """A value that LightGBM sends the way `path` goes at each of its splits, or None."""
    last, left = path[-1]
    earlier = path[:-1]
    for split, _ in (path[-1], *earlier):
        for x in _values(tree, split, values_of):
            if tree.goes_left(last, x) == left and all(
                tree.goes_left(s, x) == way for s, way in earlier
            ):
                return x
    return None


def _values(tree: Tree, split: int, known: dict[int, tuple[float, ...]]) -> tuple[float, ...]:
    if split not in known:
        known[split] = tree.split_values(split)
    return known[split]
