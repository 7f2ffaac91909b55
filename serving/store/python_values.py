"""Feast's Python-value conversion, ported: Value bytes for the types encoding.py leaves out.

Concern: `Map`, `Json`, `Struct`, `Uuid`, `TimeUuid`, `Decimal`, their `Array`s, every
`Set(...)` and nested collections (`Array(Array(...))`, `Array(Set(...))`, `Set(Array(...))`)
as Feast 0.67's materialize writes them (feast/type_map.py, `python_values_to_proto_values`).
Its input is what Feast's converter sees: a column's `to_numpy(zero_copy_only=False)` values
(dicts for structs, numpy arrays for lists, str for strings, None for nulls).

Invariants:
- For every row Feast accepts, the same Value message; where Feast raises (a Map that is not
  an object, invalid JSON, a null element in a list of integers, an empty list in a Map, ...),
  a CodecError naming the type and the row. Type checks are Feast's: on the first non-empty
  row for columns, on each value inside a Map.
- Map and Struct entries are written sorted by key, as protobuf's deterministic serialization
  does. Feast's upb runtime writes them in its hash table's order, which changes from one
  process to the next: only Feast's message can be matched, not its entry order. Sets of
  strings, bytes and timestamps are written sorted for the same reason (Feast's order follows
  Python's per-process hashing of str, bytes and numpy datetimes), and so are sets holding a
  null or NaN (hashed by identity); other sets of numbers and bools are in Feast's order,
  `list(set(values))`, which is the same in every process.
- Pure: no I/O, no protobuf messages; value_wire.py writes the bytes.
"""

from __future__ import annotations

import decimal
import json
import uuid
from collections.abc import Callable, Sequence, Sized
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np

from serving.store.codec import CodecError
from serving.store.value_wire import (
    ELEMENT,
    FIELD,
    collection_bytes,
    len_field,
    map_bytes,
    scalar_bytes,
)

__all__ = ["PYTHON_DTYPES", "encode_python_values", "value_kind"]

_INT64_MIN: Final = -(1 << 63)
_PRIMITIVE: Final = {
    "Bytes": "BYTES", "PdfBytes": "PDF_BYTES", "ImageBytes": "IMAGE_BYTES", "String": "STRING",
    "Bool": "BOOL", "Int32": "INT32", "Int64": "INT64", "Float32": "FLOAT", "Float64": "DOUBLE",
    "UnixTimestamp": "UNIX_TIMESTAMP", "Map": "MAP", "Json": "JSON", "Uuid": "UUID",
    "TimeUuid": "TIME_UUID", "Decimal": "DECIMAL",
}  # fmt: skip
# Python types Feast accepts as elements (checked on the first non-empty row).
_ELEMENT_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "FLOAT": (np.float32, np.float64, float), "DOUBLE": (np.float64, np.float32, float),
    "INT32": (np.int64, np.int32, int), "INT64": (np.int64, np.int32, int),
    "UNIX_TIMESTAMP": (np.datetime64, np.int64, np.int32, int, datetime),
    "STRING": (np.str_, str), "BOOL": (np.bool_, bool), "BYTES": (np.bytes_, bytes),
    "UUID": (np.str_, str, uuid.UUID), "TIME_UUID": (np.str_, str, uuid.UUID),
    "DECIMAL": (np.str_, str, decimal.Decimal),
}  # fmt: skip
_LIST_NONE: Final = {
    "STRING": "", "BYTES": b"", "INT32": 0, "INT64": 0, "FLOAT": 0.0, "DOUBLE": 0.0,
    "BOOL": False, "UNIX_TIMESTAMP": _INT64_MIN, "UUID": "", "TIME_UUID": "", "DECIMAL": "",
}  # fmt: skip
_INFERRED: Final = {
    "int": "INT64", "str": "STRING", "float": "DOUBLE", "bytes": "BYTES", "float64": "DOUBLE",
    "float32": "FLOAT", "int64": "INT64", "uint64": "INT64", "int32": "INT32",
    "uint32": "INT64", "int16": "INT32", "uint16": "INT32", "uint8": "INT32", "int8": "INT32",
    "bool_": "BOOL", "bool": "BOOL", "timedelta": "UNIX_TIMESTAMP",
    "timestamp": "UNIX_TIMESTAMP", "datetime": "UNIX_TIMESTAMP", "date": "UNIX_TIMESTAMP",
    "datetime64[ns]": "UNIX_TIMESTAMP", "uuid": "UUID", "decimal": "DECIMAL",
}  # fmt: skip
# Sets whose order in Feast follows per-process hashing (str, bytes, numpy datetimes)
_SORTED_SETS: Final = frozenset(
    ["STRING", "BYTES", "UUID", "TIME_UUID", "DECIMAL", "UNIX_TIMESTAMP"]
)


class _RefusedError(ValueError):
    """Where Feast's conversion raises; becomes a CodecError naming the row."""


def value_kind(dtype: str) -> str | None:
    """Feast's ValueType name of a plan dtype ("Map" -> "MAP"), None when none is written here."""
    if dtype in _PRIMITIVE:
        return _PRIMITIVE[dtype]
    if dtype.startswith("Struct("):
        return "STRUCT"
    for outer, suffix in (("Array(", "_LIST"), ("Set(", "_SET")):
        if dtype.startswith(outer) and dtype.endswith(")"):
            inner = dtype[len(outer) : -1]
            if inner.startswith(("Array(", "Set(")):
                return "VALUE" + suffix
            if inner.startswith("Struct(") and outer == "Array(":
                return "STRUCT_LIST"
            if inner in _PRIMITIVE and _PRIMITIVE[inner] + suffix in FIELD:
                return _PRIMITIVE[inner] + suffix
    return None


PYTHON_DTYPES: Final = "Map, Json, Struct, Uuid, TimeUuid, Decimal, PdfBytes, ImageBytes, Set"


def encode_python_values(dtype: str, values: Sequence[Any]) -> list[bytes]:
    """Serialized Value per row of `values` (a column's to_numpy values), as Feast writes."""
    kind = value_kind(dtype)
    if kind is None:
        raise CodecError(f"unsupported dtype {dtype!r}")
    try:
        return _convert(kind, list(values))
    except _RefusedError as exc:
        raise CodecError(f"{dtype} {exc}") from None


# --- Feast's conversion -------------------------------------------------------------------


def _non_empty(value: Any) -> bool:
    return value is not None and (
        not isinstance(value, Sized) or len(value) > 0 or isinstance(value, str)
    )


def _is_null(value: Any) -> bool:
    """pandas.isnull of one scalar."""
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return bool(value != value)
    return isinstance(value, np.datetime64) and bool(np.isnat(value))


def _array_like(value: Any) -> bool:
    return isinstance(value, np.ndarray) or (
        hasattr(value, "__len__") and not isinstance(value, str | bytes)
    )


def _row(index: int, value: Any) -> str:
    text = repr(value)
    return f"row {index}: {text[:80] + '...' if len(text) > 80 else text}"


def _convert(kind: str, values: list[Any]) -> list[bytes]:
    """Feast's `_python_value_to_proto_value(kind, values)`, as bytes."""
    if kind in ("VALUE_LIST", "VALUE_SET"):
        return [b"" if v is None else _nested(kind, v, i) for i, v in enumerate(values)]
    row_converter = _ROW_CONVERTERS.get(kind)
    if row_converter is not None:
        out = []
        for i, value in enumerate(values):
            try:
                out.append(b"" if value is None else row_converter(value))
            except _RefusedError as exc:
                raise _RefusedError(f"{_row(i, value)}: {exc}") from None
        return out
    if kind.endswith("_LIST"):
        return _lists(kind[:-5], values)
    if kind.endswith("_SET"):
        return _sets(kind[:-4], values)
    return _scalars(kind, values)


def _json_loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise _RefusedError(f"invalid JSON ({exc})") from None


def _json_dumps(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise _RefusedError(f"not JSON-serializable ({exc})") from None


def _map_row(value: Any) -> bytes:
    value = _json_loads(value) if isinstance(value, str) else value
    if not isinstance(value, dict):
        raise _RefusedError(f"expected an object (dict) for Map, got {type(value).__name__}")
    return len_field(FIELD["MAP"], _dict_to_map(value))


def _map_list_row(value: Any) -> bytes:
    value = _json_loads(value) if isinstance(value, str) else value
    if not isinstance(value, list):
        raise _RefusedError(f"expected a list for Array(Map), got {type(value).__name__}")
    return len_field(FIELD["MAP_LIST"], _map_list(value))


def _json_row(value: Any) -> bytes:
    if isinstance(value, str):
        _json_loads(value)
        return scalar_bytes("JSON", value)
    return scalar_bytes("JSON", _json_dumps(value))


def _json_list_row(value: Any) -> bytes:
    texts = []
    for item in value:
        if isinstance(item, str):
            _json_loads(item)
            texts.append(item)
        else:
            texts.append(_json_dumps(item))
    return collection_bytes(FIELD["JSON_LIST"], "string", texts)


def _struct_row(value: Any) -> bytes:
    value = _json_loads(value) if isinstance(value, str) else value
    if not isinstance(value, dict):
        value = dict(value) if hasattr(value, "items") else {"_value": str(value)}
    return len_field(FIELD["STRUCT"], _dict_to_map(value))


def _struct_list_row(value: Any) -> bytes:
    value = _json_loads(value) if isinstance(value, str) else value
    return len_field(FIELD["STRUCT_LIST"], _map_list(value))


_ROW_CONVERTERS: Final[dict[str, Callable[[Any], bytes]]] = {
    "MAP": _map_row,
    "MAP_LIST": _map_list_row,
    "JSON": _json_row,
    "JSON_LIST": _json_list_row,
    "STRUCT": _struct_row,
    "STRUCT_LIST": _struct_list_row,
}


def _dict_to_map(value: dict[Any, Any]) -> bytes:
    """Feast's `_python_dict_to_map_proto`: each entry's Value inferred from its Python type."""
    entries = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise _RefusedError(f"a Map key must be a string, got {type(key).__name__} {key!r}")
        fast = _FAST_ENTRY.get(type(item))
        if fast is not None and _fast_fits(item):  # what _inferred gives, without inferring
            entries[key] = scalar_bytes(fast, item)
        elif item is None:
            entries[key] = b""
        elif isinstance(item, dict):
            entries[key] = len_field(FIELD["MAP"], _dict_to_map(item))
        elif isinstance(item, list) and item and isinstance(item[0], dict):
            entries[key] = len_field(FIELD["MAP_LIST"], _map_list(item))
        else:
            try:
                entries[key] = _inferred(item)
            except _RefusedError as exc:
                raise _RefusedError(f"key {key!r}: {exc}") from None
    return map_bytes(entries)


# Map entry values whose Value _inferred would infer and convert as it is: by exact type.
_FAST_ENTRY: Final[dict[type, str]] = {str: "STRING", bool: "BOOL", int: "INT64", float: "DOUBLE"}
_INT64_RANGE: Final = range(-(1 << 63), 1 << 63)


def _fast_fits(item: Any) -> bool:
    """Not a NaN (a null to Feast) nor an integer beyond Int64 (refused the slow way)."""
    if type(item) is float:
        return bool(item == item)
    return type(item) is not int or item in _INT64_RANGE


def _map_list(items: Any) -> bytes:
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise _RefusedError(f"a list of Maps holds a {type(item).__name__}, not a dict")
        out.append(len_field(1, _dict_to_map(item)))
    return b"".join(out)


def _inferred(value: Any) -> bytes:
    """Feast's `python_values_to_proto_values([value], UNKNOWN)[0]` for a non-null value."""
    if not _non_empty(value):
        raise _RefusedError(f"cannot infer a type from the empty value {value!r}")
    return _convert(_infer(value), [value])[0]


def _infer(value: Any, recurse: bool = True) -> str:
    """Feast's `python_type_to_feast_value_type` for the Python values a column yields."""
    name = type(value).__name__.lower()
    if name in _INFERRED:
        return _INFERRED[name]
    if name.startswith("datetime64"):
        return "UNIX_TIMESTAMP"
    if isinstance(value, np.ndarray) and str(value.dtype) in _INFERRED:
        return _INFERRED[str(value.dtype)] + "_LIST"
    if isinstance(value, list | np.ndarray):
        if isinstance(value, np.ndarray) and len(value) > 1:  # Feast's `if value` raises
            raise _RefusedError("Feast cannot infer the type of an array of objects in a Map")
        if len(value) and isinstance(value[0], dict):
            return "MAP_LIST"
        if not recurse:
            raise _RefusedError("nested lists cannot be inferred in a Map (Feast refuses them)")
        kinds = {_infer(item, recurse=False) for item in value}
        if len(kinds) != 1:
            raise _RefusedError(f"a list mixes {', '.join(sorted(kinds))} (Feast refuses it)")
        return kinds.pop() + "_LIST"
    if isinstance(value, set):
        kinds = {_infer(item, recurse=False) for item in value}
        if len(kinds) != 1:
            raise _RefusedError(f"a set mixes {', '.join(sorted(kinds))} (Feast refuses it)")
        return kinds.pop() + "_SET"
    if isinstance(value, dict):
        if value and not isinstance(next(iter(value)), str):
            raise _RefusedError("a Map with non-string keys (ScalarMap) is not written")
        return "MAP"
    raise _RefusedError(f"Feast cannot convert a {type(value).__name__} value")


def _check_items(kind: str, rows: Sequence[Any], sanitize: Callable[[Any], Any]) -> None:
    """Feast's `_validate_collection_item_types` on the sample: the first non-empty row."""
    at = next((i for i, row in enumerate(rows) if _non_empty(row)), None)
    if at is None:
        return
    for item in sanitize(rows[at]):
        if item is not None and type(item) not in _ELEMENT_TYPES[kind]:
            raise _RefusedError(
                f"row {at}: an element {item!r} is a {type(item).__name__}, not a "
                f"{kind.lower()} (a null element in a list of integers reads as a float: "
                "Feast refuses it)"
            )


def _timestamp_seconds(value: Any) -> int:
    """Feast's `_python_datetime_to_int_timestamp` of one value."""
    if isinstance(value, datetime):
        aware = value if value.utcoffset() is not None else value.replace(tzinfo=UTC)
        return int(aware.timestamp())
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[s]").astype(np.int64))
    if isinstance(value, float) and value != value:
        return _INT64_MIN
    return int(value)


def _elements(kind: str, items: Sequence[Any]) -> list[Any]:
    """A collection's elements as its message holds them; a type Feast refuses is refused."""
    if kind == "UNIX_TIMESTAMP":
        return [_timestamp_seconds(i) for i in items]
    if kind == "BOOL":
        return [bool(i) for i in items]
    if kind in ("UUID", "TIME_UUID", "DECIMAL"):
        return [str(i) for i in items]
    numbers = (float, int, np.floating, np.integer)
    wanted: tuple[type, ...] = {
        "STRING": (str,), "BYTES": (bytes,), "DOUBLE": numbers, "FLOAT": numbers,
    }.get(kind, (int, np.integer))  # fmt: skip
    for item in items:
        if not isinstance(item, wanted):
            raise _RefusedError(
                f"an element {item!r} is a {type(item).__name__}, not a {kind.lower()}"
            )
    return list(items)


def _lists(kind: str, values: list[Any]) -> list[bytes]:
    """Feast's `_convert_list_values_to_proto` (element defaults for None included)."""
    sample = next(filter(_non_empty, values), None)
    default = _LIST_NONE.get(kind)

    def sanitize(value: Any) -> Any:
        value = value.tolist() if isinstance(value, np.ndarray) else value
        if default is not None and isinstance(value, list):
            value = [default if v is None else v for v in value]
        return value

    if isinstance(sample, bytes | bytearray):
        raise _RefusedError(
            f"rows are bytes, not lists (Feast would read them as JSON): {sample!r}"
        )
    _check_items(kind, values, sanitize)
    out = []
    for i, value in enumerate(values):
        if value is None:
            out.append(b"")
            continue
        try:
            items = _elements(kind, sanitize(value))
        except _RefusedError as exc:
            raise _RefusedError(f"{_row(i, value)}: {exc}") from None
        out.append(collection_bytes(FIELD[kind + "_LIST"], ELEMENT[kind], items))
    return out


def _sets(kind: str, values: list[Any]) -> list[bytes]:
    """Feast's `_python_set_to_proto_values`: `list(set(row))`, elements typed as in lists."""
    if kind + "_SET" not in FIELD:
        raise _RefusedError(f"Feast writes no {kind} sets")
    rows = [None if v is None else list(set(v)) for v in values]
    _check_items(kind, rows, lambda row: row)
    out = []
    for i, items in enumerate(rows):
        if items is None:
            out.append(b"")
            continue
        try:
            elements = _elements(kind, items)
        except _RefusedError as exc:
            raise _RefusedError(f"{_row(i, values[i])}: {exc}") from None
        if kind in _SORTED_SETS:
            elements.sort()
        elif any(x is None or x != x for x in items):  # hashed by identity: order is random
            elements.sort(key=lambda e: (e != e, e if e == e else 0.0))
        out.append(collection_bytes(FIELD[kind + "_SET"], ELEMENT[kind], elements))
    return out


_SCALAR_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "DOUBLE": (float, np.float64, int, np.int_, decimal.Decimal),
    "BYTES": (bytes,), "PDF_BYTES": (bytes,), "IMAGE_BYTES": (bytes,),
    "BOOL": (bool, np.bool_, int, np.int_), "UUID": (str, uuid.UUID),
    "TIME_UUID": (str, uuid.UUID), "DECIMAL": (decimal.Decimal, str),
}  # fmt: skip


def _scalars(kind: str, values: list[Any]) -> list[bytes]:
    """Feast's `_convert_scalar_values_to_proto` (UnixTimestamp as whole seconds)."""
    sample = next((v for v in values if _non_empty(v) and not _array_like(v)), None)
    if sample is None:
        return [b""] * len(values)
    allowed = _SCALAR_TYPES.get(kind)
    if allowed is not None and kind != "UNIX_TIMESTAMP":
        zero = _is_zero(sample) and kind != "BOOL"
        if zero:
            allowed = (np.int64, int, np.float64, float, decimal.Decimal)
        if type(sample) not in allowed:
            raise _RefusedError(f"the first value {sample!r} is a {type(sample).__name__}")
    converters: dict[str, Callable[[Any], Any]] = {
        "INT32": int, "INT64": int, "FLOAT": float, "STRING": str, "UUID": str,
        "TIME_UUID": str, "DECIMAL": str, "UNIX_TIMESTAMP": _timestamp_seconds,
        "BOOL": bool, "DOUBLE": float,
    }  # fmt: skip
    convert = converters.get(kind, bytes)
    out = []
    for i, value in enumerate(values):
        # Feast leaves UnixTimestamp's NaN and NaT to the conversion: INT64_MIN, not null.
        null = value is None if kind == "UNIX_TIMESTAMP" else _is_null(value)
        if null or _array_like(value):
            out.append(b"")
            continue
        try:
            out.append(scalar_bytes(kind, convert(value)))
        except (_RefusedError, TypeError, ValueError, OverflowError) as exc:
            raise _RefusedError(f"{_row(i, value)}: {exc}") from None
    return out


def _is_zero(value: Any) -> bool:
    try:
        return bool(value == 0 or value == 0.0)
    except (TypeError, ValueError):
        return False


def _nested(kind: str, value: Any, index: int) -> bytes:
    """Feast's `_convert_nested_collection_to_proto` for one row."""
    inner_values = []
    for inner in value:
        if inner is None:
            inner_values.append(b"")
            continue
        items = list(inner)
        if not items:
            inner_values.append(b"")
        elif any(isinstance(i, list | set | tuple | np.ndarray) for i in items):
            inner_values.append(_nested("VALUE_LIST", items, index))
        else:
            try:
                inner_values.append(_inferred(items))
            except _RefusedError as exc:
                raise _RefusedError(f"{_row(index, value)}: {exc}") from None
    body = b"".join(len_field(1, v) for v in inner_values)
    return len_field(FIELD[kind], body)
