"""Request columns: protobuf `Values` <-> typed columns, validated with field names.

The one place that knows how the wire's columnar `Values` map onto Feast types, so the
servicer stays a thin converter. Errors name the map and field ("entities.driver_id").

A request column becomes a Python list of the dtype's Python type (int, float, str, bool):
what Feast's python-mode on-demand functions receive, and what the key encoder packs. The
request path reads a handful of one-row columns per call, and for so short a column a list
costs several times less than a numpy array (fromiter, then isfinite): see
benchmarks/README.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from serving.client import python_value, value_message
from serving.errors import InvalidRequestError, echo
from serving.pb.carrara.v1 import prediction_pb2 as pb
from serving.repo.plan import Column

# Feast dtype -> (accepted Values kinds, wire ValueType)
_KINDS: dict[str, tuple[tuple[str, ...], pb.ValueType]] = {
    "Int64": (("int64_values",), pb.INT64),
    "Int32": (("int64_values",), pb.INT64),
    "UnixTimestamp": (("int64_values",), pb.INT64),
    "Float64": (("double_values", "int64_values"), pb.DOUBLE),
    "Float32": (("double_values", "int64_values"), pb.DOUBLE),
    "String": (("string_values",), pb.STRING),
    "Bool": (("bool_values",), pb.BOOL),
}
_FLOATS = frozenset({"Float64", "Float32"})
_WIRE_NAMES = {
    "int64_values": "int64",
    "double_values": "double",
    "string_values": "string",
    "bool_values": "bool",
    "bytes_values": "bytes",
    "nested_values": "nested",
}


def _input_kinds(dtype: str) -> tuple[str, ...]:
    """The Values kinds a caller may send for a feature that is not a wire scalar (Push)."""
    kind = feature_type(dtype)
    if kind == pb.BYTES:
        return ("bytes_values",)
    if kind == pb.STRING:  # Uuid, Decimal: their text
        return ("string_values",)
    if kind == pb.JSON:
        return ("nested_values", "string_values")
    return ("nested_values",) if kind != pb.VALUE_TYPE_UNSPECIFIED else ()


def wire_type(dtype: str) -> pb.ValueType:
    """The ValueType a caller sends for a Feast dtype (VALUE_TYPE_UNSPECIFIED if unsupported)."""
    kind = _KINDS.get(dtype)
    return kind[1] if kind else pb.VALUE_TYPE_UNSPECIFIED


# Feast dtypes of features returned as text, bytes or nested values (GetOnlineFeatures)
_TEXT_DTYPES = frozenset({"Uuid", "TimeUuid", "Decimal"})
_BYTES_DTYPES = frozenset({"Bytes", "PdfBytes", "ImageBytes"})
_NESTED_TYPES = {
    "Array": pb.LIST,
    "Set": pb.SET,
    "Map": pb.MAP,
    "Struct": pb.STRUCT,
    "Json": pb.JSON,
}


def feature_type(dtype: str) -> pb.ValueType:
    """The ValueType of a feature column of Feast dtype `dtype` (any Feast type)."""
    if dtype in _TEXT_DTYPES:
        return pb.STRING
    if dtype in _BYTES_DTYPES:
        return pb.BYTES
    scalar = wire_type(dtype)
    if scalar != pb.VALUE_TYPE_UNSPECIFIED:
        return scalar
    return _NESTED_TYPES.get(dtype.partition("(")[0], pb.VALUE_TYPE_UNSPECIFIED)


def feature_values(values: Sequence[object], dtype: str) -> pb.Values:
    """A feature column of Python values (codec.decode_value's; None where not PRESENT) onto
    the wire: scalars in their typed list with a default where None, the rest as a Value per
    row (an unset Value where None)."""
    kind = feature_type(dtype)
    if kind == pb.BYTES:
        return pb.Values(bytes_values=pb.BytesList(values=[v or b"" for v in values]))  # type: ignore[misc]
    if kind in _NESTED_TYPES.values():
        return pb.Values(nested_values=pb.ValueList(values=[value_message(v) for v in values]))
    fill = _DEFAULTS.get(kind, "")
    filled = [fill if v is None else v for v in values]
    return values_message(np.array(filled, dtype=object), "String" if kind == pb.STRING else dtype)


_DEFAULTS: dict[int, object] = {pb.INT64: 0, pb.DOUBLE: math.nan, pb.BOOL: False}


def read_columns(
    section: str,
    values: Mapping[str, pb.Values],
    expected: Sequence[Column],
    max_rows: int,
    known_as: str = "an input of this model",
) -> tuple[dict[str, list[Any]], int]:
    """Typed columns for `expected` fields of a request map, and the common row count."""
    columns: dict[str, list[Any]] = {}
    for column in expected:
        given = values.get(column.name)  # never `values[name]`: a protobuf map would insert it
        if given is None:
            raise InvalidRequestError(f"{section}.{column.name} is missing")
        columns[column.name] = _to_list(section, column.name, given, column.dtype)
    if len(values) > len(expected):
        unknown = sorted(set(values) - {c.name for c in expected})
        raise InvalidRequestError(f"{section}: {echo(unknown[0])} is not {known_as}")
    rows = _common_length(section, columns)
    if rows == 0 and columns:
        raise InvalidRequestError(f"{section} has no rows")
    if rows > max_rows:
        raise InvalidRequestError(f"{section}: {rows} rows exceed the limit of {max_rows}")
    return columns, rows


def _common_length(section: str, columns: Mapping[str, list[Any]]) -> int:
    """The row count most columns agree on; a column that disagrees is named."""
    lengths = [len(c) for c in columns.values()]
    if not lengths:
        return 0
    if lengths.count(lengths[0]) == len(lengths):
        return lengths[0]
    rows = max(set(lengths), key=lengths.count)
    for name, column in columns.items():
        if len(column) != rows:
            raise InvalidRequestError(
                f"{section}.{name} has {len(column)} values, expected {rows} (one per row)"
            )
    return rows


def _to_list(section: str, name: str, values: pb.Values, dtype: str) -> list[Any]:
    kind = values.WhichOneof("kind")
    if kind is None:  # no rows: any kind will do
        return []
    raw = getattr(values, kind).values
    accepted, _ = _KINDS.get(dtype) or (_input_kinds(dtype), pb.VALUE_TYPE_UNSPECIFIED)
    if kind == "nested_values" and kind in accepted:
        return [python_value(v) for v in raw]
    if kind not in accepted and raw:
        want = " or ".join(_WIRE_NAMES[k] for k in accepted) or dtype
        raise InvalidRequestError(
            f"{section}.{name} must be {want} values, got {_WIRE_NAMES[kind]}"
        )
    column = list(raw)
    if dtype in _FLOATS:
        if kind == "int64_values":
            return [float(v) for v in column]
        if not all(map(math.isfinite, column)):
            row = next(i for i, v in enumerate(column) if not math.isfinite(v))
            raise InvalidRequestError(f"{section}.{name} row {row} is not a finite number")
    return column


def values_message(array: np.ndarray, dtype: str) -> pb.Values:
    """A column back onto the wire (GetOnlineFeatures)."""
    wire = wire_type(dtype)
    if wire == pb.INT64:
        return pb.Values(int64_values=pb.Int64List(values=array.tolist()))
    if wire == pb.STRING:
        return pb.Values(string_values=pb.StringList(values=array.tolist()))
    if wire == pb.BOOL:
        return pb.Values(bool_values=pb.BoolList(values=array.tolist()))
    return pb.Values(double_values=pb.DoubleList(values=array.tolist()))
