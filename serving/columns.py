"""Request columns: protobuf `Values` <-> typed numpy columns, validated with field names.

The one place that knows how the wire's columnar `Values` map onto Feast types, so the
servicer stays a thin converter. Errors name the map and field ("entities.driver_id").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from serving.errors import InvalidRequestError
from serving.pb.carrara.v1 import prediction_pb2 as pb
from serving.plan import Column

# Feast dtype -> (accepted Values kinds, numpy dtype, wire ValueType)
_KINDS: dict[str, tuple[tuple[str, ...], type, pb.ValueType]] = {
    "Int64": (("int64_values",), np.int64, pb.INT64),
    "Int32": (("int64_values",), np.int64, pb.INT64),
    "UnixTimestamp": (("int64_values",), np.int64, pb.INT64),
    "Float64": (("double_values", "int64_values"), np.float64, pb.DOUBLE),
    "Float32": (("double_values", "int64_values"), np.float64, pb.DOUBLE),
    "String": (("string_values",), object, pb.STRING),
    "Bool": (("bool_values",), np.bool_, pb.BOOL),
}
_WIRE_NAMES = {
    "int64_values": "int64",
    "double_values": "double",
    "string_values": "string",
    "bool_values": "bool",
}


def wire_type(dtype: str) -> pb.ValueType:
    """The ValueType a caller sends for a Feast dtype (VALUE_TYPE_UNSPECIFIED if unsupported)."""
    kind = _KINDS.get(dtype)
    return kind[2] if kind else pb.VALUE_TYPE_UNSPECIFIED


def read_columns(
    section: str, values: Mapping[str, pb.Values], expected: Sequence[Column], max_rows: int
) -> tuple[dict[str, np.ndarray], int]:
    """Typed columns for `expected` fields of a request map, and the common row count."""
    columns: dict[str, np.ndarray] = {}
    for column in expected:
        if column.name not in values:
            raise InvalidRequestError(f"{section}.{column.name} is missing")
        columns[column.name] = _to_array(
            f"{section}.{column.name}", values[column.name], column.dtype
        )
    rows = _common_length(section, columns)
    unknown = sorted(set(values) - {c.name for c in expected})
    if unknown:
        raise InvalidRequestError(f"{section}.{unknown[0]} is not an input of this model")
    if rows == 0 and columns:
        raise InvalidRequestError(f"{section} has no rows")
    if rows > max_rows:
        raise InvalidRequestError(f"{section}: {rows} rows exceed the limit of {max_rows}")
    return columns, rows


def _common_length(section: str, columns: Mapping[str, np.ndarray]) -> int:
    """The row count most columns agree on; a column that disagrees is named."""
    lengths = [len(c) for c in columns.values()]
    if not lengths:
        return 0
    rows = max(set(lengths), key=lengths.count)
    for name, column in columns.items():
        if len(column) != rows:
            raise InvalidRequestError(
                f"{section}.{name} has {len(column)} values, expected {rows} (one per row)"
            )
    return rows


def _to_array(field: str, values: pb.Values, dtype: str) -> np.ndarray:
    kind = values.WhichOneof("kind")
    accepted, numpy_type, _ = _KINDS.get(dtype, ((), object, pb.VALUE_TYPE_UNSPECIFIED))
    if kind is None or not getattr(values, kind).values:  # no rows: any kind will do
        return np.empty(0, dtype=numpy_type)
    if kind not in accepted:
        want = " or ".join(_WIRE_NAMES[k] for k in accepted) or dtype
        raise InvalidRequestError(f"{field} must be {want} values, got {_WIRE_NAMES[kind]}")
    raw = getattr(values, kind).values
    if numpy_type is object:
        array = np.empty(len(raw), dtype=object)
        array[:] = list(raw)
        return array
    # fromiter is ~7x faster than np.array on a short protobuf container (a request's usual
    # size), np.array faster on long ones.
    array = np.fromiter(raw, numpy_type, len(raw)) if len(raw) <= 32 else np.array(raw, numpy_type)
    if numpy_type is np.float64 and not np.isfinite(array).all():
        row = int(np.flatnonzero(~np.isfinite(array))[0])
        raise InvalidRequestError(f"{field} row {row} is not a finite number")
    return array


def to_values(array: np.ndarray, dtype: str) -> pb.Values:
    """A column back onto the wire (GetOnlineFeatures)."""
    wire = wire_type(dtype)
    if wire == pb.INT64:
        return pb.Values(int64_values=pb.Int64List(values=array.tolist()))
    if wire == pb.STRING:
        return pb.Values(string_values=pb.StringList(values=array.tolist()))
    if wire == pb.BOOL:
        return pb.Values(bool_values=pb.BoolList(values=array.tolist()))
    return pb.Values(double_values=pb.DoubleList(values=array.tolist()))
