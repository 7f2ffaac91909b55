"""GetOnlineFeatures values on the wire: every Feast type in, the same Python values out."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from serving.client import python_value, python_values, value_message
from serving.online.wire import feature_type, feature_values
from serving.pb.carrara.v1 import prediction_pb2 as pb

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
NESTED = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(NESTED)
def test_nested_values_come_back_as_they_went(value: Any) -> None:
    assert python_value(pb.Value.FromString(value_message(value).SerializeToString())) == value


def test_feast_types_map_to_wire_types() -> None:
    assert feature_type("Int32") == pb.INT64
    assert feature_type("Float32") == pb.DOUBLE
    assert feature_type("PdfBytes") == pb.BYTES
    assert feature_type("Decimal") == pb.STRING
    assert feature_type("Array(Int64)") == pb.LIST
    assert feature_type("Set(String)") == pb.SET
    assert feature_type("Map") == pb.MAP
    assert feature_type("Struct({name: String})") == pb.STRUCT
    assert feature_type("Json") == pb.JSON


def _column(values: list[Any], dtype: str, statuses: list[Any]) -> list[Any]:
    column = pb.FeatureColumn(
        name="v__f",
        type=feature_type(dtype),
        values=feature_values(values, dtype),
        statuses=statuses,
    )
    return python_values(pb.FeatureColumn.FromString(column.SerializeToString()))


def test_a_missing_value_is_none_whatever_its_type() -> None:
    present, missing = pb.PRESENT, pb.MISSING
    assert _column([1, None], "Int64", [present, missing]) == [1, None]
    assert _column([b"\x00", None], "Bytes", [present, missing]) == [b"\x00", None]
    assert _column([[1, None], None], "Array(Int64)", [present, missing]) == [[1, None], None]
    assert _column([{"a": {"b": [1.5]}}, None], "Map", [present, missing]) == [
        {"a": {"b": [1.5]}},
        None,
    ]
    doubles = _column([None, 2.5], "Float64", [missing, present])
    assert doubles[0] is None
    assert doubles[1] == 2.5
    assert math.isnan(feature_values([None], "Float64").double_values.values[0])
