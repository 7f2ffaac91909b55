"""serving.store.codec: golden bytes from FEAST_REDIS_FORMAT.md, Feast 0.67 itself as the oracle.

Golden tests run without Feast. Property tests marked `slow` import Feast once per module
(~8 s) and compare the codec with Feast's own serializers on hypothesis-drawn inputs.
"""

from __future__ import annotations

import math
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.store import codec, encoding
from serving.store.codec import CodecError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

PROPERTY = settings(
    max_examples=200,
    deadline=None,  # the first example pays Feast's and pyarrow's warm-up
    database=None,  # no .hypothesis/ directory in the tree
    suppress_health_check=[HealthCheck.too_slow],
)

SCALARS = ["Int32", "Int64", "Float32", "Float64", "String", "Bool", "Bytes", "UnixTimestamp"]
ARRAYS = [f"Array({dtype})" for dtype in SCALARS]
FIELD = {
    "Bytes": "bytes_val",
    "String": "string_val",
    "Int32": "int32_val",
    "Int64": "int64_val",
    "Float64": "double_val",
    "Float32": "float_val",
    "Bool": "bool_val",
    "UnixTimestamp": "unix_timestamp_val",
}
LIST_PROTO = {
    "Bytes": "BytesList",
    "String": "StringList",
    "Int32": "Int32List",
    "Int64": "Int64List",
    "Float64": "DoubleList",
    "Float32": "FloatList",
    "Bool": "BoolList",
    "UnixTimestamp": "Int64List",
}
ARROW = {
    "Bytes": pa.binary(),
    "String": pa.string(),
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "Float64": pa.float64(),
    "Float32": pa.float32(),
    "Bool": pa.bool_(),
    "UnixTimestamp": pa.timestamp("s"),
}


def h(text: str) -> bytes:
    """Hex with spaces and quoted ASCII, as written in FEAST_REDIS_FORMAT.md."""
    out = b""
    for part in text.split():
        out += part[1:-1].encode() if part.startswith('"') else bytes.fromhex(part)
    return out


# --- golden bytes: §2 entity keys -------------------------------------------------------


DRIVER_1001 = h('01000000 02000000 09000000 "driver_id" 04000000 08000000 e903000000000000 "fspec"')
COMPOSITE = h(
    '02000000 02000000 09000000 "driver_id" 02000000 07000000 "zone_id"'
    ' 04000000 08000000 e903000000000000 02000000 05000000 "north" "fspec"'
)


def test_entity_key_single_int64_matches_the_redis_dump() -> None:
    assert encoding.encode_entity_keys(["driver_id"], ["Int64"], [[1001]], "fspec") == [DRIVER_1001]
    assert codec.encode_entity_key(["driver_id"], ["Int64"], [1001], "fspec") == DRIVER_1001


@pytest.mark.parametrize(
    ("names", "dtypes", "values"),
    [
        (["driver_id", "zone_id"], ["Int64", "String"], [1001, "north"]),
        (["zone_id", "driver_id"], ["String", "Int64"], ["north", 1001]),
    ],
)
def test_entity_key_composite_is_sorted_by_name_in_either_order(
    names: list[str], dtypes: list[str], values: list[object]
) -> None:
    columns = [np.array([v]) if isinstance(v, int) else pa.array([v]) for v in values]
    assert encoding.encode_entity_keys(names, dtypes, columns, "fspec") == [COMPOSITE]
    assert codec.encode_entity_key(names, dtypes, values, "fspec") == COMPOSITE


def test_entity_key_int32_is_four_bytes_with_tag_3() -> None:
    golden = h('01000000 02000000 0a000000 "vehicle_id" 03000000 04000000 f9ffffff "fspec"')
    assert encoding.encode_entity_keys(["vehicle_id"], ["Int32"], [[-7]], "fspec") == [golden]
    assert codec.encode_entity_key(["vehicle_id"], ["Int32"], [-7], "fspec") == golden


def test_entity_key_entityless_dummy_id() -> None:
    golden = h('01000000 02000000 0a000000 "__dummy_id" 02000000 00000000 "fspec"')
    assert encoding.encode_entity_keys(["__dummy_id"], ["String"], [[""]], "fspec") == [golden]


def test_entity_key_prefix_is_the_key_up_to_the_values() -> None:
    assert codec.entity_key_prefix(["driver_id"]) == DRIVER_1001[:21]
    assert codec.entity_key_prefix(["zone_id", "driver_id"]) == COMPOSITE[:36]


def test_entity_key_bytes_and_unix_timestamp_values() -> None:
    head = h('01000000 02000000 01000000 "k"')
    assert codec.encode_entity_key(["k"], ["Bytes"], [b"\x00\xff"], "p") == (
        head + h('01000000 02000000 00ff "p"')
    )
    when = datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC)  # floors to -1 s
    golden = head + h('08000000 08000000 ffffffffffffffff "p"')
    assert codec.encode_entity_key(["k"], ["UnixTimestamp"], [-1], "p") == golden
    assert codec.encode_entity_key(["k"], ["UnixTimestamp"], [when], "p") == golden
    assert encoding.encode_entity_keys(["k"], ["UnixTimestamp"], [[when]], "p") == [golden]


def test_field_names() -> None:
    assert codec.field_name("driver_stats", "conv_rate") == h("fa 73 10 14")
    assert codec.ts_field("driver_stats") == b"_ts:driver_stats"


# --- golden bytes: §3 values --------------------------------------------------------------

WHEN = datetime(2024, 5, 1, 12, tzinfo=UTC)  # the "T" of the table: 40 c0ddc8b106

VALUE_TABLE = [
    ("Bytes", b"", "0a 00"),
    ("String", "alice", '12 05 "alice"'),
    ("String", "", "12 00"),
    ("Int32", -1, "18 ffffffffffffffffff01"),
    ("Int64", 7, "20 07"),
    ("Int64", -1, "20 ffffffffffffffffff01"),
    ("Float64", 0.1, "29 9a9999999999b93f"),
    ("Float32", 0.1, "35 cdcccc3d"),
    ("Bool", False, "38 00"),
    ("UnixTimestamp", int(WHEN.timestamp()), "40 c0ddc8b106"),
    ("UnixTimestamp", -1, "40 ffffffffffffffffff01"),
    ("Array(String)", ["a", "b"], "62 06 0a0161 0a0162"),
    ("Array(String)", [""], "62 02 0a00"),
    ("Array(Int64)", [1, 2, 3], "72 05 0a03 010203"),
    ("Array(Int64)", [], "72 00"),
    ("Array(Float32)", [0.5, -1.25], "8201 0a 0a08 0000003f 0000a0bf"),
    ("Array(Bool)", [True, False], "8a01 04 0a02 0100"),
    ("String", None, ""),
    ("Float64", None, ""),
    ("Array(Int64)", None, ""),
]


@pytest.mark.parametrize(("dtype", "value", "golden"), VALUE_TABLE)
def test_value_bytes_match_the_format_table(dtype: str, value: object, golden: str) -> None:
    assert encoding.encode_values(dtype, [value]) == [h(golden)]


@pytest.mark.parametrize(("dtype", "value", "golden"), VALUE_TABLE)
def test_value_bytes_decode_back(dtype: str, value: Any, golden: str) -> None:
    expected = float(np.float32(value)) if dtype == "Float32" else value
    assert codec.decode_value(h(golden)) == expected


def test_unix_timestamp_from_datetimes_is_whole_seconds_floored() -> None:
    column = pa.array([WHEN, datetime(1969, 12, 31, 23, 59, 59, 500000)], pa.timestamp("us"))
    assert encoding.encode_values("UnixTimestamp", column) == [
        h("40 c0ddc8b106"),
        h("40 ffffffffffffffffff01"),
    ]


def test_null_unix_timestamp_is_int64_min_not_empty() -> None:
    nat = h("40 80808080808080808001")
    column = np.array(["2024-05-01T12:00", "NaT"], dtype="datetime64[s]")
    assert encoding.encode_values("UnixTimestamp", column) == [h("40 c0ddc8b106"), nat]
    assert encoding.encode_values("UnixTimestamp", [None]) == [nat]
    assert codec.decode_value(nat) is None


def test_nulls_are_empty_and_defaults_are_not_null() -> None:
    assert encoding.encode_values("Float64", [math.nan, None, 0.0]) == [
        b"",
        b"",
        h("29" + "00" * 8),
    ]
    assert encoding.encode_values("Int64", pa.array([None, 0], pa.int64())) == [b"", h("20 00")]
    assert encoding.encode_values("Bool", np.array([None, False], dtype=object)) == [
        b"",
        h("38 00"),
    ]
    assert encoding.encode_values("Array(String)", [None, []]) == [b"", h("62 00")]
    assert codec.decode_value(b"") is None
    assert codec.decode_value(None) is None


def test_list_elements_are_never_null() -> None:
    """Feast's materialize: "" / False / INT64_MIN for a null element; NaN in float lists; a
    null in a list of integers is refused (its type check sees floats)."""
    with pytest.raises(CodecError, match="row 1 holds a null element"):
        encoding.encode_values("Array(Int32)", [[1], [1, None]])
    assert codec.decode_value(encoding.encode_values("Array(Float32)", [[None]])[0]) != [0.0]
    assert codec.decode_value(encoding.encode_values("Array(String)", [["a", None]])[0]) == [
        "a",
        "",
    ]
    assert codec.decode_value(encoding.encode_values("Array(Bool)", [[None]])[0]) == [False]
    stamps = encoding.encode_values("Array(UnixTimestamp)", [[5, None]])[0]
    assert stamps == h("9201 0d 0a0b 05 80808080808080808001")
    assert codec.decode_value(stamps) == [5, None]


def test_float_lists_keep_nan_elements() -> None:
    (raw,) = encoding.encode_values("Array(Float64)", [[math.nan, -0.0]])
    got = codec.decode_value(raw)
    assert isinstance(got, list)
    assert math.isnan(got[0])
    assert math.copysign(1.0, got[1]) == -1.0


# --- golden bytes: event timestamps -----------------------------------------------------


def test_timestamps_are_protobuf_timestamps_with_microseconds() -> None:
    column = [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 500000),  # naive = UTC
        datetime(2024, 5, 1, 14, tzinfo=timezone(timedelta(hours=2))),
        datetime(2024, 5, 1, 12, 0, 0, 1, tzinfo=UTC),
    ]
    assert encoding.encode_timestamps(column) == [
        b"",
        h("08 ffffffffffffffffff01 10 80cab5ee01"),
        h("08 c0ddc8b106"),
        h("08 c0ddc8b106 10 e807"),
    ]
    micros = [0, -500_000, 1_714_564_800_000_000, 1_714_564_800_000_001]
    assert encoding.timestamp_micros(column).tolist() == micros
    assert (
        [codec.decode_timestamp_micros(raw) for raw in encoding.encode_timestamps(column)]
        == [
            None,  # epoch 0 is b"": indistinguishable from "no timestamp"
            *micros[1:],
        ]
    )


@pytest.mark.parametrize(
    "column",
    [
        pa.array([1_714_564_800_123_456_789], pa.timestamp("ns", tz="America/New_York")),
        pa.chunked_array([pa.array([1_714_564_800_123_456], pa.timestamp("us"))]),
        pa.array([1_714_564_800_123], pa.timestamp("ms", tz="+05:30")).cast(
            pa.timestamp("ns", tz="+05:30")
        ),
        np.array([1_714_564_800_123_456_789], dtype="datetime64[ns]"),
        np.array([1_714_564_800_123_456], dtype=np.int64),
        [datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))],
    ],
)
def test_timestamp_columns_of_any_kind_normalise_to_utc_micros(column: Any) -> None:
    micros = encoding.timestamp_micros(column).tolist()[0]
    assert micros // 1000 == 1_714_564_800_123  # ms input has no micros
    assert codec.decode_timestamp_micros(encoding.encode_timestamps(column)[0]) == micros


def test_nanoseconds_floor_to_microseconds_before_1970() -> None:
    column = np.array([-1, -1001], dtype="datetime64[ns]")
    assert encoding.timestamp_micros(column).tolist() == [-1, -2]


# --- input kinds ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "values"),
    [
        ("Float32", [0.5, None, 1e300, -0.0]),
        ("Int64", [INT64_MIN, None, INT64_MAX]),
        ("Int32", [INT32_MIN, None, 300]),
        ("String", ["ü", None, ""]),
        ("Bool", [True, None, False]),
        ("Array(Float64)", [[1.5], None, []]),
        ("Array(String)", [["x", ""], None, []]),
    ],
)
def test_numpy_lists_and_arrow_columns_encode_alike(dtype: str, values: list[Any]) -> None:
    expected = encoding.encode_values(dtype, values)
    arrow = pa.array(values, pa.list_(ARROW[dtype[6:-1]]) if "(" in dtype else ARROW[dtype])
    assert encoding.encode_values(dtype, arrow) == expected
    assert encoding.encode_values(dtype, pa.chunked_array([arrow[:1], arrow[1:]])) == expected
    assert encoding.encode_values(dtype, arrow.slice(1)) == expected[1:]
    assert encoding.encode_values(dtype, np.array(values, dtype=object)) == expected


def test_numpy_numeric_columns() -> None:
    assert encoding.encode_values("Float32", np.array([0.1, np.nan])) == [h("35 cdcccc3d"), b""]
    assert encoding.encode_values("Int32", np.array([-1], np.int64)) == [
        h("18 ffffffffffffffffff01")
    ]
    assert encoding.encode_values("Array(Int64)", np.array([[1, 2], [3, 4]])) == [
        h("72 04 0a02 0102"),
        h("72 04 0a02 0304"),
    ]


def test_empty_columns() -> None:
    for dtype in SCALARS + ARRAYS:
        assert encoding.encode_values(dtype, []) == []
    assert encoding.encode_entity_keys(["k"], ["Int64"], [[]], "p") == []
    assert encoding.encode_timestamps(np.array([], np.int64)) == []


def test_long_values_take_the_flat_path() -> None:
    values = ["x" * 300, "", "y" * 1000, None]
    expected = [h("12 ac02") + b"x" * 300, h("12 00"), h("12 e807") + b"y" * 1000, b""]
    assert encoding.encode_values("String", values) == expected
    many = [str(i) * (i % 40) for i in range(200)]  # more distinct lengths than groups
    assert [codec.decode_value(raw) for raw in encoding.encode_values("String", many)] == many
    keys = encoding.encode_entity_keys(["a", "b"], ["String", "String"], [many, many[::-1]], "p")
    assert keys == [
        codec.encode_entity_key(["a", "b"], ["String", "String"], [x, y], "p")
        for x, y in zip(many, many[::-1], strict=True)
    ]


# --- errors -------------------------------------------------------------------------


def test_a_null_join_key_names_the_key_and_row() -> None:
    with pytest.raises(CodecError, match=r"'zone_id'.*row 1"):
        encoding.encode_entity_keys(
            ["driver_id", "zone_id"], ["Int64", "String"], [[1, 2], ["a", None]], "p"
        )
    with pytest.raises(CodecError, match=r"'driver_id'.*row 2"):
        encoding.encode_entity_keys(["driver_id"], ["Int64"], [np.array([1.0, 2.0, np.nan])], "p")
    with pytest.raises(CodecError, match=r"'driver_id'.*null"):
        codec.encode_entity_key(["driver_id"], ["Int64"], [None], "p")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: encoding.encode_values("Int32", [1, 2**31]), r"Int32 column: row 1"),
        (lambda: encoding.encode_values("Int64", ["x"]), r"Int64 column: row 0"),
        (lambda: encoding.encode_values("Float16", [1.0]), r"unsupported dtype 'Float16'"),
        (lambda: encoding.encode_values("Array(Int32)", [[2**40]]), r"Array\(Int32\) column"),
        (lambda: codec.encode_entity_key(["k"], ["Float64"], [1.0], "p"), r"'k'.*Float64"),
        (lambda: codec.encode_entity_key(["k"], ["Int32"], [2**31], "p"), r"'k'.*out of range"),
        (lambda: codec.encode_entity_key(["k"], ["Int64"], ["7"], "p"), r"'k'.*str"),
        (lambda: codec.encode_entity_key(["k"], ["Int64"], [True], "p"), r"'k'.*bool"),
        (lambda: encoding.encode_entity_keys(["k", "k"], ["Int64"] * 2, [[1], [1]], "p"), "dupl"),
        (lambda: encoding.encode_entity_keys(["a", "b"], ["Int64"] * 2, [[1], [1, 2]], "p"), "len"),
        (lambda: encoding.encode_timestamps([datetime(2024, 1, 1), None]), r"row 1"),
        (lambda: encoding.encode_timestamps(["yesterday"]), r"timestamp column"),
        (lambda: codec.decode_value(h("12 05 61")), "malformed"),
        (lambda: codec.decode_value(h("12 01 ff")), "malformed"),
        (lambda: codec.decode_value(h("2f")), "malformed"),  # wire type 7
        (lambda: codec.decode_value(h("20 ffffffffffffffffffff01")), "malformed"),
        (lambda: codec.decode_value(h("fa02 00")), "unknown_field_47"),
        (lambda: codec.decode_timestamp_micros(h("08 ff")), "malformed"),
        (lambda: codec.decode_numeric("String", [], np.empty(0)), "not numeric"),
        (lambda: codec.decode_numeric("Int64", [b""], np.empty(2)), "1 values for 2"),
        (lambda: codec.decode_numeric("Int64", [None, h("12 00")], np.empty(2)), r"Int64 row 1"),
        (lambda: codec.decode_numeric("Int64", [h("20 80")], np.empty(1)), r"Int64 row 0"),
    ],
)
def test_rejections_raise_codec_error_naming_what(call: Callable[[], object], message: str) -> None:
    with pytest.raises(CodecError, match=message):
        call()


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)
    assert dict(codec.DTYPE_TAGS) == {
        "Bytes": 1,
        "String": 2,
        "Int32": 3,
        "Int64": 4,
        "UnixTimestamp": 8,
    }


# --- reading what protobuf accepts ------------------------------------------------------


def test_decode_accepts_unpacked_repeated_numerics() -> None:
    assert codec.decode_value(h("72 04 0801 0802")) == [1, 2]  # int64_list_val, unpacked
    assert codec.decode_value(h("72 06 0801 0a02 0203")) == [1, 2, 3]  # mixed
    assert codec.decode_value(h("8201 05 0d 0000c03f")) == [1.5]  # float_list_val, unpacked
    assert codec.decode_value(h("7a 09 09 000000000000f83f")) == [1.5]  # double, unpacked


def test_decode_last_oneof_field_wins_and_repeated_messages_merge() -> None:
    assert codec.decode_value(h("20 07 12 01 61")) == "a"
    assert codec.decode_value(h("12 01 61 20 07")) == 7
    assert codec.decode_value(h("72 03 0a01 01 72 03 0a01 02")) == [1, 2]
    assert codec.decode_value(h("72 03 0a01 01 20 05 72 03 0a01 02")) == [2]
    assert codec.decode_value(h("9801 00 20 07")) == 7  # an unread member that lost
    assert codec.decode_value(h("20 07 4a 01 00")) == 7  # field 9 is not in Value: skipped


def test_decode_int32_truncates_to_32_bits_and_bool_is_any_nonzero() -> None:
    assert codec.decode_value(h("18 ffffffff0f")) == -1
    assert codec.decode_value(h("18 8080808010")) == 0
    assert codec.decode_value(h("38 02")) is True


def test_decode_numeric_reads_every_numeric_kind() -> None:
    raws = [
        *encoding.encode_values("Float32", [0.1]),
        *encoding.encode_values("Float64", [-0.0]),
        *encoding.encode_values("Int64", [5, 300, 2**40, -1, INT64_MIN]),
        *encoding.encode_values("Int32", [-7, 16384]),
        *encoding.encode_values("Bool", [True, False]),
        *encoding.encode_values("UnixTimestamp", [None, 1, -1]),
        None,
        b"",
        h("20 07 29 000000000000f83f"),  # two fields: the last wins
    ]
    out = np.full(len(raws), 99.0)
    codec.decode_numeric("Float64", raws, out)
    expected = [float(np.float32(0.1)), -0.0, 5, 300, 2**40, -1, INT64_MIN, -7, 16384, 1, 0]
    expected += [math.nan, 1, -1, math.nan, math.nan, 1.5]
    np.testing.assert_array_equal(out, expected)
    assert math.copysign(1, out[1]) == -1


def test_importing_the_codec_imports_neither_feast_nor_redis() -> None:
    code = "import sys, serving.store.codec; print(sorted({'feast', 'redis'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"


# --- Feast as the oracle -------------------------------------------------------------------


@pytest.fixture(scope="module")
def feast() -> SimpleNamespace:
    """Feast's own serializers (imported once: ~8 s)."""
    from feast.infra.key_encoding_utils import serialize_entity_key, serialize_entity_key_prefix
    from feast.infra.online_stores.helpers import _mmh3, _redis_key
    from feast.protos.feast.types import Value_pb2
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import python_values_to_proto_values
    from feast.utils import _columns_to_proto_values
    from feast.value_type import ValueType
    from google.protobuf.timestamp_pb2 import Timestamp

    return SimpleNamespace(
        serialize_entity_key=serialize_entity_key,
        serialize_entity_key_prefix=serialize_entity_key_prefix,
        mmh3=_mmh3,
        redis_key=_redis_key,
        pb=Value_pb2,
        EntityKey=EntityKey,
        python_values_to_proto_values=python_values_to_proto_values,
        columns_to_proto_values=_columns_to_proto_values,
        ValueType=ValueType,
        Timestamp=Timestamp,
    )


def proto_value(feast: SimpleNamespace, dtype: str, value: Any) -> Any:
    """feast.types.Value holding `value` exactly as materialize builds it."""
    if dtype.startswith("Array("):
        element = dtype[6:-1]
        if value is None:
            return feast.pb.Value()
        items = [INT64_MIN if x is None and element == "UnixTimestamp" else x for x in value]
        listed = getattr(feast.pb, LIST_PROTO[element])(val=items)
        return feast.pb.Value(**{FIELD[element].replace("_val", "_list_val"): listed})
    if dtype == "UnixTimestamp" and value is None:
        return feast.pb.Value(unix_timestamp_val=INT64_MIN)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return feast.pb.Value()
    return feast.pb.Value(**{FIELD[dtype]: value})


ELEMENTS: dict[str, st.SearchStrategy[Any]] = {
    "Int32": st.integers(INT32_MIN, INT32_MAX),
    "Int64": st.integers(INT64_MIN, INT64_MAX) | st.sampled_from([0, INT64_MIN, INT64_MAX]),
    "Float32": st.floats(width=32) | st.floats() | st.sampled_from([-0.0, math.inf, 3.5e38]),
    "Float64": st.floats() | st.sampled_from([0.0, -0.0, math.inf, -math.inf, 5e-324]),
    "String": st.text(max_size=8),
    "Bool": st.booleans(),
    "Bytes": st.binary(max_size=8),
    "UnixTimestamp": st.integers(-(2**40), 2**40),
}


def one_value(dtype: str) -> st.SearchStrategy[Any]:
    if dtype.startswith("Array("):
        return st.none() | st.lists(ELEMENTS[dtype[6:-1]], max_size=3)
    return st.none() | ELEMENTS[dtype]


def column_of(dtype: str) -> st.SearchStrategy[list[Any]]:
    if dtype.startswith("Array("):
        items = st.lists(ELEMENTS[dtype[6:-1]], max_size=4)
        return st.lists(st.none() | items, max_size=6)
    return st.lists(st.none() | ELEMENTS[dtype], max_size=8)


@pytest.mark.slow
@PROPERTY
@given(data=st.data())
def test_values_match_feast_protobuf(feast: SimpleNamespace, data: st.DataObject) -> None:
    dtype = data.draw(st.sampled_from(SCALARS + ARRAYS))
    column = data.draw(column_of(dtype))
    expected = [proto_value(feast, dtype, v).SerializeToString() for v in column]
    assert encoding.encode_values(dtype, column) == expected


def materialize_column(feast: SimpleNamespace, dtype: str, column: pa.Array) -> list[bytes]:
    """What Feast's materialize writes for an arrow column (utils._columns_to_proto_values)."""
    value_type = feast.ValueType[_value_type_name(dtype)]
    batch = pa.RecordBatch.from_arrays([column], ["f"])
    protos = feast.columns_to_proto_values(batch, [("f", value_type)])["f"]
    return [p.SerializeToString() for p in protos]


def _value_type_name(dtype: str) -> str:
    names = {
        "Bytes": "BYTES",
        "String": "STRING",
        "Int32": "INT32",
        "Int64": "INT64",
        "Float64": "DOUBLE",
        "Float32": "FLOAT",
        "Bool": "BOOL",
        "UnixTimestamp": "UNIX_TIMESTAMP",
    }
    if dtype.startswith("Array("):
        return names[dtype[6:-1]] + "_LIST"
    return names[dtype]


def arrow_column_of(dtype: str) -> st.SearchStrategy[pa.Array]:
    """Arrow columns as a Parquet source gives them to materialize."""
    element = dtype[6:-1] if dtype.startswith("Array(") else dtype
    values = ELEMENTS[element]
    if element == "Int64":  # materialize loses precision above 2**53 with nulls (§5)
        values = st.integers(-(2**53), 2**53)
    if element == "UnixTimestamp":
        values = st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1))
        if dtype.startswith("Array("):  # Feast truncates list elements; whole seconds agree
            values = values.map(lambda moment: moment.replace(microsecond=0))
    if dtype.startswith("Array("):
        arrow_type = pa.list_(pa.timestamp("us") if element == "UnixTimestamp" else ARROW[element])
        items = st.lists(values, max_size=4)
        return st.lists(st.none() | items, min_size=1, max_size=6).map(
            lambda rows: pa.array(rows, arrow_type)
        )
    arrow_type = pa.timestamp("us") if element == "UnixTimestamp" else ARROW[element]
    return st.lists(st.none() | values, min_size=1, max_size=8).map(
        lambda rows: pa.array(rows, arrow_type, from_pandas=True)
    )


@pytest.mark.slow
@PROPERTY
@given(data=st.data())
def test_arrow_columns_match_feast_materialize(feast: SimpleNamespace, data: st.DataObject) -> None:
    dtype = data.draw(st.sampled_from(SCALARS + ARRAYS))
    column = data.draw(arrow_column_of(dtype))
    if dtype == "Bytes" and not any(column.to_pylist()):
        column = pa.concat_arrays([column, pa.array([b"x"])])  # see the test below
    assert encoding.encode_values(dtype, column) == materialize_column(feast, dtype, column)


@pytest.mark.slow
def test_feast_writes_empty_bytes_as_null_only_when_the_whole_batch_is(
    feast: SimpleNamespace,
) -> None:
    """A Feast quirk the codec does not copy: b"" is "empty" to Feast's type sampling, so a
    batch of only b""/None is written all-null, while b"" next to other bytes is `0a 00`."""
    only_empty = pa.array([b"", None])
    assert materialize_column(feast, "Bytes", only_empty) == [b"", b""]
    mixed = pa.array([b"", None, b"x"])
    assert materialize_column(feast, "Bytes", mixed) == [h("0a 00"), b"", h("0a 01 78")]
    assert encoding.encode_values("Bytes", only_empty) == [h("0a 00"), b""]
    assert encoding.encode_values("Bytes", mixed) == materialize_column(feast, "Bytes", mixed)


KEY_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "Int64": st.integers(INT64_MIN, INT64_MAX),
    "Int32": st.integers(INT32_MIN, INT32_MAX),
    "String": st.text(max_size=10),
    "Bytes": st.binary(max_size=10),
    "UnixTimestamp": st.integers(-(2**40), 2**40),
}


@pytest.mark.slow
@PROPERTY
@given(data=st.data())
def test_entity_keys_match_feast_v3(feast: SimpleNamespace, data: st.DataObject) -> None:
    names = data.draw(
        st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=3, unique=True)
    )
    dtypes = [data.draw(st.sampled_from(sorted(KEY_VALUES))) for _ in names]
    rows = data.draw(st.integers(1, 5))
    columns = [data.draw(st.lists(KEY_VALUES[d], min_size=rows, max_size=rows)) for d in dtypes]
    project = data.draw(st.text(max_size=8))
    expected = []
    for row in range(rows):
        values = [
            feast.pb.Value(**{FIELD[d]: c[row]}) for d, c in zip(dtypes, columns, strict=True)
        ]
        key = feast.EntityKey(join_keys=names, entity_values=values)
        expected.append(feast.redis_key(project, key, entity_key_serialization_version=3))
        assert expected[-1] == feast.serialize_entity_key(key, 3) + project.encode()
    assert encoding.encode_entity_keys(names, dtypes, columns, project) == expected
    arrow = [
        pa.array(c, ARROW[d] if d != "UnixTimestamp" else pa.int64())
        for d, c in zip(dtypes, columns, strict=True)
    ]
    assert encoding.encode_entity_keys(names, dtypes, arrow, project) == expected
    singles = [
        codec.encode_entity_key(names, dtypes, [c[r] for c in columns], project)
        for r in range(rows)
    ]
    assert singles == expected
    assert codec.entity_key_prefix(names) == feast.serialize_entity_key_prefix(names, 3)


@pytest.mark.slow
@PROPERTY
@given(view=st.text(max_size=20), feature=st.text(max_size=20))
def test_field_names_match_feast_mmh3(feast: SimpleNamespace, view: str, feature: str) -> None:
    assert codec.field_name(view, feature) == feast.mmh3(f"{view}:{feature}")


ZONES = st.none() | st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@pytest.mark.slow
@PROPERTY
@given(zone=ZONES, data=st.data())
def test_timestamps_match_protobuf_from_datetime(
    feast: SimpleNamespace, zone: Any, data: st.DataObject
) -> None:
    moments = data.draw(
        st.lists(
            st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1), timezones=st.just(zone)),
            max_size=6,
        )
    )
    expected = []
    for moment in moments:
        stamp = feast.Timestamp()
        stamp.FromDatetime(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
        expected.append(stamp.SerializeToString())
    assert encoding.encode_timestamps(moments) == expected
    micros = [codec.decode_timestamp_micros(raw) for raw in expected]
    assert micros == [m or None for m in encoding.timestamp_micros(moments).tolist()]
    as_numpy = np.array(
        [m.replace(tzinfo=None) - (m.utcoffset() or timedelta()) for m in moments],
        dtype="datetime64[us]",
    )
    assert encoding.encode_timestamps(as_numpy) == expected


@pytest.mark.slow
@PROPERTY
@given(data=st.data())
def test_decode_agrees_with_protobuf_on_concatenated_values(
    feast: SimpleNamespace, data: st.DataObject
) -> None:
    dtypes = data.draw(st.lists(st.sampled_from(SCALARS + ARRAYS), min_size=1, max_size=3))
    raw = b"".join(encoding.encode_values(d, [data.draw(one_value(d))])[0] for d in dtypes)
    parsed = feast.pb.Value.FromString(raw)
    field = parsed.WhichOneof("val")
    expected: Any = None if field is None else getattr(parsed, field)
    if field is not None and field.endswith("_list_val"):
        expected = list(expected.val)
    if field == "unix_timestamp_val" and expected == INT64_MIN:
        expected = None  # Feast's null timestamp
    got = codec.decode_value(raw)
    assert _same(got, expected)


def _same(got: Any, expected: Any) -> bool:
    if isinstance(expected, list):
        return (
            isinstance(got, list)
            and len(got) == len(expected)
            and all(_same(g, e) for g, e in zip(got, expected, strict=True))
        )
    if isinstance(expected, float):
        return isinstance(got, float) and struct.pack("<d", got) == struct.pack("<d", expected)
    return type(got) is type(expected) and got == expected


# --- round trips (no Feast) --------------------------------------------------------------


@PROPERTY
@given(data=st.data())
def test_decode_of_encode_is_identity(data: st.DataObject) -> None:
    dtype = data.draw(st.sampled_from(SCALARS + ARRAYS))
    column = data.draw(column_of(dtype))
    decoded = [codec.decode_value(raw) for raw in encoding.encode_values(dtype, column)]
    assert all(_same(g, _expected_back(dtype, v)) for g, v in zip(decoded, column, strict=True))


def _expected_back(dtype: str, value: Any, in_list: bool = False) -> Any:
    if isinstance(value, list):
        return [_expected_back(dtype[6:-1], v, in_list=True) for v in value]
    if isinstance(value, float) and math.isnan(value) and not in_list:  # NaN cells are null
        return None
    if dtype == "Float32" and value is not None:
        with np.errstate(over="ignore"):  # beyond float32's range is inf, as protobuf stores it
            return float(np.float32(value))
    return value


@PROPERTY
@given(data=st.data())
def test_decode_numeric_agrees_with_decode_value(data: st.DataObject) -> None:
    dtype = data.draw(
        st.sampled_from(["Int32", "Int64", "Float32", "Float64", "Bool", "UnixTimestamp"])
    )
    raws: list[bytes | None] = [*encoding.encode_values(dtype, data.draw(column_of(dtype)))]
    raws += data.draw(st.lists(st.none(), max_size=2))
    out = np.empty(len(raws))
    codec.decode_numeric(dtype, raws, out)
    decoded: list[Any] = [codec.decode_value(raw) for raw in raws]
    expected = [math.nan if value is None else float(value) for value in decoded]
    assert struct.pack(f"<{len(raws)}d", *out) == struct.pack(f"<{len(raws)}d", *expected)


@PROPERTY
@given(
    names=st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=3, unique=True),
    data=st.data(),
)
def test_column_and_single_row_keys_agree(names: list[str], data: st.DataObject) -> None:
    dtypes = [data.draw(st.sampled_from(sorted(KEY_VALUES))) for _ in names]
    row = [data.draw(KEY_VALUES[d]) for d in dtypes]
    single = codec.encode_entity_key(names, dtypes, row, "p")
    assert encoding.encode_entity_keys(names, dtypes, [[v] for v in row], "p") == [single]
    assert single.startswith(codec.entity_key_prefix(names))
    assert single.endswith(b"p")


@PROPERTY
@given(data=st.data())
def test_vectorised_numeric_decoding_equals_the_one_by_one_decoding(data: st.DataObject) -> None:
    dtypes = ["Int32", "Int64", "Float32", "Float64", "Bool", "UnixTimestamp"]
    raws: list[bytes | None] = []
    for dtype in data.draw(st.lists(st.sampled_from(dtypes), max_size=4)):
        raws += encoding.encode_values(dtype, data.draw(column_of(dtype)))
    raws += data.draw(st.lists(st.sampled_from([None, b""]), max_size=3))
    raws += data.draw(st.lists(st.binary(max_size=12), max_size=2))  # odd bytes, even malformed
    raws = data.draw(st.permutations(raws))
    try:
        expected = codec.numeric_values("Float64", raws)
    except codec.CodecError as error:
        with pytest.raises(codec.CodecError, match=re.escape(str(error))):
            codec.numeric_array("Float64", raws)
        return
    got = codec.numeric_array("Float64", raws)
    assert struct.pack(f"<{len(raws)}d", *got) == struct.pack(f"<{len(raws)}d", *expected)


@pytest.mark.parametrize(
    ("dtype", "values"),
    [
        ("Map", [{"a": 1, "b": "x", "c": [1, 2], "d": {"e": 1.5}}, {}]),
        ("Json", ['{"a": [1, null, "x"]}', "[1, 2]", '"s"', "null"]),
        ("Struct({'name': String, 'age': String})", [{"name": "n", "age": "3"}]),
        ("Set(Int64)", [np.array([3, 1, 2])]),
        ("Set(String)", [np.array(["b", "a"])]),
        ("Array(Map)", [[{"a": 1}, {"b": 2}]]),
        ("Uuid", ["12345678-1234-5678-1234-567812345678"]),
        ("Decimal", ["1.25"]),
        ("Array(Json)", [np.array(['{"a": 1}', "[2]"])]),
        ("Array(Array(Int64))", [[np.array([1, 2]), np.array([3])]]),
        ("Set(Array(Int64))", [[np.array([1, 2]), np.array([1, 2])]]),
    ],
)
def test_decode_value_reads_every_type_as_feast_does(dtype: str, values: list[object]) -> None:
    """Value bytes as Feast writes them (python_values.py, proven byte-identical elsewhere),
    decoded as Feast's own `feast_value_type_to_python_type` decodes them (sets as lists,
    uuids and decimals as text)."""
    import decimal
    import uuid

    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import feast_value_type_to_python_type

    from serving.store.python_values import encode_python_values

    for raw in encode_python_values(dtype, values):
        ours: Any = codec.decode_value(raw)
        feast = feast_value_type_to_python_type(Value.FromString(raw))
        if isinstance(feast, set):
            feast, ours = sorted(feast, key=repr), sorted(ours, key=repr)
        if isinstance(feast, uuid.UUID | decimal.Decimal):
            feast = str(feast)
        assert ours == feast, (dtype, raw.hex())
