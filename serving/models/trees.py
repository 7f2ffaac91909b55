"""LightGBM's trees as arrays, read from its text model, and its rule for sending a value down.

Concern: what `Booster.predict` does at one split, written out so that the verification
(verification.py) can build inputs that reach any split and know where each split can part
two implementations. Nothing here predicts a score.

LightGBM's rule (LightGBM 4, `Tree::NumericalDecision` / `CategoricalDecision`, and the dense
row reader that drops |x| <= kZeroThreshold, so such a value is 0.0):
- numerical: NaN is 0.0 unless the split's missing type is NaN; a missing value (NaN for
  missing type NaN, 0.0 for missing type Zero) goes to the default side; else left iff
  x <= threshold.
- categorical: left iff x is not NaN, int(x) is a valid int >= 0 and its bit is set in the
  split's bitset (32 categories a word); everything else goes right.

Invariants: parsing never trusts the text (any inconsistency is MalformedTreesError, never an
IndexError later); a parsed tree is a tree (every split but the root has one parent, every
leaf one parent), so walking it terminates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

ZERO_BAND = float(np.float32(1e-35))  # LightGBM's kZeroThreshold (a float): |x| <= this is 0.0
LARGEST = float(np.finfo(np.float64).max)
OUTSIDE_BAND = math.nextafter(ZERO_BAND, math.inf)
# Tested at every numerical split: missing, both zeros, both infinities.
EVERY_SPLIT = (math.nan, 0.0, -0.0, math.inf, -math.inf)
# Both edges of the zero band: tested where the band can decide otherwise than 0 itself (missing
# type Zero, or a threshold near zero).
BAND_EDGES = (ZERO_BAND, -ZERO_BAND, OUTSIDE_BAND, -OUTSIDE_BAND)
NEAR_ZERO = 1e-30
# The largest doubles: tested where they can go otherwise than the infinities and the doubles
# just past the threshold (a threshold at or near the largest double, or infinite).
EXTREMES = (LARGEST, -LARGEST)
NEAR_LARGEST = 1e300
SPECIAL_VALUES = (*EVERY_SPLIT, *BAND_EDGES, *EXTREMES)
# For a categorical split, beside every code its bitset can test: missing, negative, fractional
# (truncated to a code), the edges of a valid int and beyond, the infinities.
CATEGORY_EXTRAS = (
    *(math.nan, -1.0, -0.5, -0.0, ZERO_BAND, 0.5, 1.5, math.inf, -math.inf),
    *(2.0**31 - 1, 2.0**31, 2.0**32, 2.0**32 + 1, LARGEST, -LARGEST),
)
CATEGORICAL = 1  # decision_type bits (LightGBM tree.h)
DEFAULT_LEFT = 2
MISSING_ZERO = 1  # (decision_type >> 2) & 3
MISSING_NAN = 2


class MalformedTreesError(ValueError):
    """The text's trees are not what LightGBM 4 writes."""


@dataclass(frozen=True)
class Tree:
    """One tree. Splits are numbered as in the text; a child >= 0 is a split, < 0 leaf ~child."""

    feature: tuple[int, ...]
    threshold: tuple[float, ...]  # categorical: the index of the split's bitset
    decision: tuple[int, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    leaves: int
    cat_boundaries: tuple[int, ...]
    cat_words: tuple[int, ...]

    @property
    def splits(self) -> int:
        return len(self.feature)

    def category_words(self, split: int) -> tuple[int, ...]:
        at = int(self.threshold[split])
        return self.cat_words[self.cat_boundaries[at] : self.cat_boundaries[at + 1]]

    def goes_left(self, split: int, x: float) -> bool:
        """Where LightGBM's `Booster.predict` sends `x` at `split`."""
        decision = self.decision[split]
        if decision & CATEGORICAL:
            if not -1.0 < x < 2.0**31:  # NaN too; int(x) < 0 or not an int: right
                return False
            code, words = int(x), self.category_words(split)
            return code < 32 * len(words) and bool(words[code >> 5] >> (code & 31) & 1)
        if -ZERO_BAND <= x <= ZERO_BAND:
            x = 0.0
        missing = (decision >> 2) & 3
        if math.isnan(x):
            if missing == MISSING_NAN:
                return bool(decision & DEFAULT_LEFT)
            x = 0.0
        if missing == MISSING_ZERO and x == 0.0:
            return bool(decision & DEFAULT_LEFT)
        return x <= self.threshold[split]

    def split_values(self, split: int) -> tuple[float, ...]:
        """The values where `split` can send an input elsewhere than the values around them:
        the threshold, the next double either side and EVERY_SPLIT, with BAND_EDGES and
        EXTREMES where they can decide otherwise; for a categorical split every code its
        bitset can test, one more, and CATEGORY_EXTRAS.

        Between them LightGBM's decision is constant: it changes at the threshold, at NaN,
        and at the band's edges only for missing type Zero or a threshold in or at the band
        (elsewhere the band goes where 0 goes); the largest doubles go where the infinities or
        the next double past the threshold go unless the threshold is at or beyond them."""
        decision = self.decision[split]
        if decision & CATEGORICAL:
            codes = 32 * len(self.category_words(split)) + 1
            return (*(float(c) for c in range(codes)), *CATEGORY_EXTRAS)
        t = self.threshold[split]
        band = (decision >> 2) & 3 == MISSING_ZERO or abs(t) <= NEAR_ZERO
        return (
            *(t, math.nextafter(t, -math.inf), math.nextafter(t, math.inf), *EVERY_SPLIT),
            *(BAND_EDGES if band else ()),
            *(EXTREMES if abs(t) >= NEAR_LARGEST else ()),
        )

    def subtree_splits(self, child: int) -> int:
        """How many splits hang under `child` (itself included)."""
        count, todo = 0, [child]
        while todo:  # bounded: a parsed tree has no cycles
            node = todo.pop()
            if node >= 0:
                count += 1
                todo += (self.left[node], self.right[node])
        return count

    def parents(self) -> dict[int, int]:
        """Node -> its parent split; leaves as ~leaf."""
        return {child: s for s in range(self.splits) for child in (self.left[s], self.right[s])}


def parse_header(text: str) -> dict[str, str]:
    """The key=value lines before the first tree."""
    return _fields(text.split("\nTree=", 1)[0])


def parse_trees(text: str, width: int) -> list[Tree]:
    """Every tree of a LightGBM 4 text model whose inputs have `width` columns."""
    sections = text.split("end of trees", 1)[0].split("\nTree=")[1:]
    try:
        return [_tree(_fields(section), width) for section in sections]
    except (KeyError, ValueError, IndexError, OverflowError) as exc:
        raise MalformedTreesError(f"{type(exc).__name__}: {exc}") from exc


def _fields(section: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in section.splitlines() if "=" in line)


def _tree(fields: dict[str, str], width: int) -> Tree:
    leaves = int(fields["num_leaves"])
    if leaves < 1:
        raise ValueError("num_leaves < 1")
    if leaves == 1:
        return Tree((), (), (), (), (), 1, (), ())
    feature, decision, left, right = (
        _ints(fields[key])
        for key in ("split_feature", "decision_type", "left_child", "right_child")
    )
    threshold = tuple(float(v) for v in fields["threshold"].split())
    categorical = int(fields.get("num_cat", "0")) > 0
    tree = Tree(
        feature,
        threshold,
        decision,
        left,
        right,
        leaves,
        _ints(fields["cat_boundaries"]) if categorical else (),
        _ints(fields["cat_threshold"]) if categorical else (),
    )
    _check(tree, width)
    return tree


def _ints(values: str) -> tuple[int, ...]:
    return tuple(int(v) for v in values.split())


def _check(tree: Tree, width: int) -> None:
    n = tree.splits
    if {len(tree.threshold), len(tree.decision), len(tree.left), len(tree.right)} != {n}:
        raise ValueError("split arrays differ in length from num_leaves - 1")
    if not all(0 <= f < width for f in tree.feature):
        raise ValueError(f"a split feature is not a column of {width}")
    children = [*tree.left, *tree.right]
    if sorted(c for c in children if c >= 0) != list(range(1, n)) or sorted(
        ~c for c in children if c < 0
    ) != list(range(tree.leaves)):
        raise ValueError("children do not form a tree")
    bounds, words = tree.cat_boundaries, tree.cat_words
    if any(b < a for a, b in pairwise(bounds)) or (
        bounds and (bounds[0] != 0 or bounds[-1] != len(words))
    ):
        raise ValueError("cat_boundaries do not index cat_threshold")
    for s in range(n):
        if tree.decision[s] & CATEGORICAL:
            t = tree.threshold[s]
            if not (t == int(t) and 0 <= t < len(bounds) - 1):
                raise ValueError(f"categorical split {s} has no bitset")
