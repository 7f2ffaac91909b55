"""The ported Feast conversion (serving/store/python_values.py) against Feast's own.

Feast's side gets what its materialize gets: the Arrow column after the pandas round trips of
its local compute engine, `to_numpy(zero_copy_only=False)`; ours gets the column as read from
Parquet. Messages must be equal, serialized deterministically (map entries sorted: Feast's
own entry order changes from one process to the next); sets of strings compare as sets.
Where Feast raises, Carrara must refuse with a CodecError naming the row.
"""

# ruff: noqa: E501  (one test case per line)
from __future__ import annotations

import decimal
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest

from serving.store import encoding
from serving.store.codec import CodecError
from serving.store.python_values import encode_python_values, value_kind

T0 = datetime(2026, 10, 1, tzinfo=UTC)
U1, U2 = "6f1c1a52-2f0e-4c3c-9a59-0f6d3f2b9c11", "a3bb189e-8bf9-11ee-b9d1-0242ac120002"
TS = pa.timestamp("us", tz="UTC")


def _struct(**fields: Any) -> Any:
    return pa.struct(list(fields.items()))


# (plan dtype, Feast type expression for ValueType, Arrow column)
ACCEPTED: list[tuple[str, pa.Array]] = [
    ("Map", pa.array([{"a": "1", "b": "x"}, {"a": None, "b": ""}, None], _struct(a=pa.string(), b=pa.string()))),
    ("Map", pa.array(['{"a": 1, "b": [1, 2], "c": {"d": true}, "e": null}', "{}", None, '{"f": 1.5, "g": [{"h": "i"}]}'])),
    ("Map", pa.array([{"i": 1, "f": 2.5, "s": "x", "b": True}, {"i": None, "f": None, "s": None, "b": None}, {"i": 2**40, "f": -0.0, "s": "", "b": False}], _struct(i=pa.int64(), f=pa.float64(), s=pa.string(), b=pa.bool_()))),
    ("Map", pa.array([{"l": [1, 2], "d": decimal.Decimal("1.50"), "t": datetime(2026, 1, 1)}], _struct(l=pa.list_(pa.int64()), d=pa.decimal128(5, 2), t=pa.timestamp("us")))),
    ("Map", pa.array([{"": "empty key", "z": "last", "é": "accent"}], _struct(**{"": pa.string(), "z": pa.string(), "é": pa.string()}))),
    ("Json", pa.array(['{"max": 157, "zones": ["east"]}', "[]", None, '"s"', "1", "null"])),
    ("Json", pa.array(['{"a": 1}', None], pa.large_string())),
    ("Json", pa.array([{"a": "1", "b": 2}, None], _struct(a=pa.string(), b=pa.int64()))),
    ("Struct({name: String, age: String})", pa.array([{"name": "n", "age": "41"}, {"name": None, "age": ""}, None], _struct(name=pa.string(), age=pa.string()))),
    ("Struct({n: Int64, f: Float64, b: Bool})", pa.array([{"n": 1, "f": 1.5, "b": True}, {"n": None, "f": None, "b": None}, None, {"n": 2**62, "f": -1.0, "b": False}], _struct(n=pa.int64(), f=pa.float64(), b=pa.bool_()))),
    ("Struct({n: Int64})", pa.array(['{"n": 3}', None])),
    ("Uuid", pa.array([U1, U2, None])),
    ("TimeUuid", pa.array([U2, None, U2])),
    ("Decimal", pa.array(["1.50", "-0.001", None, "1e10"])),
    ("Decimal", pa.array([decimal.Decimal("1.500"), None, decimal.Decimal("0")], pa.decimal128(10, 3))),
    ("PdfBytes", pa.array([b"%PDF", b"", None], pa.binary())),
    ("ImageBytes", pa.array([b"\x89PNG", None], pa.large_binary())),
    ("Array(Json)", pa.array([['{"a": 1}', "[]"], [], None, [None, "1"]])),
    ("Array(Uuid)", pa.array([[U1, U2], [], None, [None, U1]])),
    ("Array(TimeUuid)", pa.array([[U2], [], None, [None]])),
    ("Array(Decimal)", pa.array([["1.5", "2"], [], None, [None, "3"]])),
    ("Array(Map)", pa.array(['[{"a": "1"}, {"b": 2}]', None, "[]"])),
    ("Array(Struct({a: String}))", pa.array([[{"a": "1"}, {"a": "2"}], [], None, [{"a": None}]], pa.list_(_struct(a=pa.string())))),
    ("Array(Array(Int64))", pa.array([[[1, 2], [3]], [], None, [None, [4], []]], pa.list_(pa.list_(pa.int64())))),
    ("Array(Array(String))", pa.array([[["a"], ["b", "c"]], [], None, [None, []], [[""]]], pa.list_(pa.list_(pa.string())))),
    ("Array(Set(Int64))", pa.array([[[1, 2], [3]], None, [[2, 2, 1]]], pa.list_(pa.list_(pa.int64())))),
    ("Array(Array(Array(Int32)))", pa.array([[[[1], [2, 3]], [[4]]], None], pa.list_(pa.list_(pa.list_(pa.int32()))))),
    ("Set(Array(Int64))", pa.array([[[1, 2], [1, 2]], [], None, [[3]]], pa.list_(pa.list_(pa.int64())))),
    ("Set(String)", pa.array([["b", "a", "b", "c", "d"], [], None, ["x"]])),
    ("Set(Int64)", pa.array([[3, 1, 3, 2**40, -5], [], None, [2]], pa.list_(pa.int64()))),
    ("Set(Int32)", pa.array([[3, 1, 3, -7], [], None], pa.list_(pa.int32()))),
    ("Set(Float32)", pa.array([[1.5, 1.5, 0.25, -3.0], [], None], pa.list_(pa.float32()))),
    ("Set(Float64)", pa.array([[1.5, 0.1, 1e300], [], None, [None, 2.0]], pa.list_(pa.float64()))),
    ("Set(Bool)", pa.array([[True, True, False], [], None, [False]], pa.list_(pa.bool_()))),
    ("Set(Bytes)", pa.array([[b"a", b"a", b"b"], [], None], pa.list_(pa.binary()))),
    ("Set(UnixTimestamp)", pa.array([[T0, T0, T0 + timedelta(seconds=3)], [], None, [None, T0]], pa.list_(TS))),
    ("Set(Uuid)", pa.array([[U1, U1, U2], [], None, [None, U1]])),
    ("Set(TimeUuid)", pa.array([[U2], [], None])),
    ("Set(Decimal)", pa.array([["1.5", "1.5", "2"], [], None, [None, "3"]])),
]  # fmt: skip

REFUSED: list[tuple[str, pa.Array, str]] = [
    ("Map", pa.array([[("a", "1")]], pa.map_(pa.string(), pa.string())), "row 0"),
    ("Map", pa.array(["[1, 2]"]), "row 0"),
    ("Map", pa.array(["{not json"]), "invalid JSON"),
    ("Map", pa.array([{"l": []}], _struct(l=pa.list_(pa.int64()))), "key 'l'"),
    ("Map", pa.array([{"l": ["a", "b"]}], _struct(l=pa.list_(pa.string()))), "key 'l'"),
    ("Json", pa.array(['{"a": 1}', "{not json"]), "row 1"),
    ("Array(Map)", pa.array([[{"a": "1"}]], pa.list_(_struct(a=pa.string()))), "row 0"),
    ("Array(Struct({a: String}))", pa.array([[None, {"a": "3"}]], pa.list_(_struct(a=pa.string()))), "row 0"),
    ("Array(Json)", pa.array([["{oops"]]), "row 0"),
    ("Set(String)", pa.array([[None, "x"]]), "row 0"),
    ("Set(Int64)", pa.array([[1, None]], pa.list_(pa.int64())), "row 0"),
    ("Set(Bytes)", pa.array([[None, b"x"]], pa.list_(pa.binary())), "row 0"),
    ("Array(Array(String))", pa.array([[[None, "x"]]], pa.list_(pa.list_(pa.string()))), "row 0"),
]  # fmt: skip


@pytest.fixture(scope="module")
def feast() -> SimpleNamespace:
    """Feast's converter and types (imported once: ~8 s)."""
    from feast.field import _str_to_feast_type
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import python_values_to_proto_values

    return SimpleNamespace(
        convert=python_values_to_proto_values, Value=Value, type_of=_str_to_feast_type
    )


def _feast_type(feast: SimpleNamespace, dtype: str) -> Any:
    """A plan dtype string ('Struct({a: String})') as a Feast type."""
    if "Struct(" in dtype:
        import feast.types as ft

        return eval(
            dtype.replace("{", "{'").replace(": ", "': ").replace(", ", ", '"), vars(ft)
        )  # test data only
    return feast.type_of(_upper_leaves(dtype))


def _upper_leaves(dtype: str) -> str:
    import re

    names = {"PdfBytes": "PDF_BYTES", "ImageBytes": "IMAGE_BYTES", "TimeUuid": "TIME_UUID"}
    names |= {"UnixTimestamp": "UNIX_TIMESTAMP", "Float32": "FLOAT32", "Float64": "FLOAT64"}

    def leaf(match: re.Match[str]) -> str:
        word = match.group(0)
        return word if word in ("Array", "Set") else names.get(word, word.upper())

    return re.sub(r"[A-Za-z0-9]+", leaf, dtype)


def _feast_values(column: pa.Array) -> Any:
    """The column as Feast's materialize hands it to the converter: pandas round trips."""
    table = pa.Table.from_pandas(pa.table({"c": column}).to_pandas())
    return pa.Table.from_pandas(table.to_pandas()).column("c").to_numpy(zero_copy_only=False)


def _canonical(feast: SimpleNamespace, raw: bytes) -> Any:
    """A Value as comparable data: deterministic bytes, string sets as sorted lists."""
    if not raw:
        return None
    value = feast.Value.FromString(raw)
    kind = value.WhichOneof("val")
    if kind in ("string_set_val", "bytes_set_val", "uuid_set_val", "time_uuid_set_val",
                "decimal_set_val", "unix_timestamp_set_val"):  # fmt: skip
        return kind, sorted(getattr(value, kind).val)
    if kind in ("double_set_val", "float_set_val"):  # NaN in a set: Feast's order is random
        items = list(getattr(value, kind).val)
        if any(x != x for x in items):
            return kind, sorted(repr(x) for x in items)
    return value.SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    ("dtype", "column"), ACCEPTED, ids=[f"{d}-{i}" for i, (d, _) in enumerate(ACCEPTED)]
)
def test_values_are_feast_s(feast: SimpleNamespace, dtype: str, column: pa.Array) -> None:
    value_type = _feast_type(feast, dtype).to_value_type()
    expected = [v.SerializeToString() for v in feast.convert(_feast_values(column), value_type)]
    ours = encode_python_values(dtype, column.to_numpy(zero_copy_only=False))
    assert [_canonical(feast, r) for r in ours] == [_canonical(feast, r) for r in expected]
    sets: tuple[str, ...] = ("Set(String)", "Set(Bytes)", "Set(Uuid)", "Set(TimeUuid)")
    sets += ("Set(Decimal)", "Set(UnixTimestamp)", "Set(Float64)")
    if "Map" not in dtype and "Struct" not in dtype and dtype not in sets:
        assert ours == expected  # no map inside: Feast's bytes are deterministic, and ours


@pytest.mark.parametrize(
    ("dtype", "column", "where"), REFUSED, ids=[f"{d}-{i}" for i, (d, _, _) in enumerate(REFUSED)]
)
def test_what_feast_refuses_is_refused(
    feast: SimpleNamespace, dtype: str, column: pa.Array, where: str
) -> None:
    value_type = _feast_type(feast, dtype).to_value_type()
    with pytest.raises(Exception):  # noqa: B017, PT011 - Feast raises TypeError, ValueError, ...
        feast.convert(_feast_values(column), value_type)
    with pytest.raises(CodecError, match=where):
        encode_python_values(dtype, column.to_numpy(zero_copy_only=False))


def test_value_kinds_follow_feast_s_value_types() -> None:
    assert value_kind("Map") == "MAP"
    assert value_kind("Struct({a: String})") == "STRUCT"
    assert value_kind("Array(Struct({a: String}))") == "STRUCT_LIST"
    assert value_kind("Array(Array(Int64))") == "VALUE_LIST"
    assert value_kind("Set(Array(Int64))") == "VALUE_SET"
    assert value_kind("Set(Map)") is None
    assert value_kind("ZonedTimestamp") is None
    assert value_kind("ScalarMap") is None


def test_encode_values_takes_every_type_it_writes() -> None:
    column = pa.array([{"a": "1"}, None], _struct(a=pa.string()))
    assert encoding.encode_values("Map", column)[1] == b""
    with pytest.raises(CodecError, match="ZonedTimestamp"):
        encoding.encode_values("ZonedTimestamp", pa.array([T0]))
