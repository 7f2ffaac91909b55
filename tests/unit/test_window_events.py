"""Pushed event values as the windows take them: typed as their column (tests/integration
has the windows themselves)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving.errors import InvalidRequestError
from serving.ingest.windows import _numbers


def test_float32_columns_are_rounded_as_their_parquet_holds_them() -> None:
    got = _numbers("fare", "Float32", [0.1, None, math.nan, 3])
    assert got == [float(np.float32(0.1)), None, None, 3.0]


def test_integer_columns_take_integers_in_range_only() -> None:
    assert _numbers("trips", "Int32", [1, -(2**31), None]) == [1, -(2**31), None]
    with pytest.raises(InvalidRequestError, match=r"columns.trips row 1: .* Int32"):
        _numbers("trips", "Int32", [1, 2**31])
    with pytest.raises(InvalidRequestError, match=r"columns.trips row 0: 1.5 is not an Int64"):
        _numbers("trips", "Int64", [1.5])


@pytest.mark.parametrize("bad", ["1", True, math.inf, [1]])
def test_anything_but_a_finite_number_is_refused_naming_column_and_row(bad: object) -> None:
    with pytest.raises(InvalidRequestError, match=r"columns.x row 1: "):
        _numbers("x", "Float64", [1.0, bad])
