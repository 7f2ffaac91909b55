"""Feast 0.67's Redis wire format: entity keys, field names, Value and Timestamp bytes.

Concern: the exact bytes Feast 0.67 writes to and reads from its Redis online store with
``entity_key_serialization_version = 3`` (see /work/shared/FEAST_REDIS_FORMAT.md): the hash
key, the hash field names, serialized ``feast.types.Value`` feature values and the
``google.protobuf.Timestamp`` under ``_ts:{view}``.

Invariants:
- Pure: no I/O; neither redis nor feast is imported (importing feast costs ~8 s).
- Encoders are byte-identical to Feast's materialize path (tests use Feast as the oracle).
- Null (None/NaN/NaT) encodes to ``b""``, except UnixTimestamp, which Feast writes as
  ``unix_timestamp_val = INT64_MIN``; both decode to None. List elements are never null: a
  null element becomes Feast's default (0, 0.0, "", b"", False, INT64_MIN).
- Column encoders work on whole numpy/pyarrow buffers; the only per-row Python work is
  creating each output ``bytes`` object. No protobuf message is ever built.
- Decoders accept what protobuf accepts: packed and unpacked repeated numerics, the last oneof
  field wins, fields outside ``Value`` are skipped.
- Timestamps are int64 UTC microseconds (or whole seconds, floored, for UnixTimestamp
  values); naive datetimes are UTC.
- Every rejection is a CodecError naming the dtype or join key and, where known, the row.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, NamedTuple, TypeAlias, TypeGuard

import mmh3
import numpy as np
import numpy.typing as npt
import pyarrow as pa

__all__ = [
    "DTYPE_TAGS",
    "CodecError",
    "decode_numeric",
    "decode_timestamp_micros",
    "decode_value",
    "encode_entity_key",
    "encode_entity_keys",
    "encode_timestamps",
    "encode_values",
    "entity_key_prefix",
    "field_name",
    "timestamp_micros",
    "ts_field",
]

U8: TypeAlias = npt.NDArray[np.uint8]
I64: TypeAlias = npt.NDArray[np.int64]
U64: TypeAlias = npt.NDArray[np.uint64]
Mask: TypeAlias = npt.NDArray[np.bool_]
# pyarrow ships no type information, so its arrays are Any to mypy.
ArrayLike: TypeAlias = "pa.Array | pa.ChunkedArray | npt.NDArray[Any] | Sequence[Any]"


class CodecError(ValueError):
    """Bytes or values that Feast's Redis format cannot carry; the message names dtype and row."""


# ValueType enum tags that can appear in entity keys (feast.types.Value.ValueType).
DTYPE_TAGS: Final[Mapping[str, int]] = MappingProxyType(
    {"Bytes": 1, "String": 2, "Int32": 3, "Int64": 4, "UnixTimestamp": 8}
)
_STRING_TAG: Final = 2
_INT64_MIN: Final = -(1 << 63)
_U64_MASK: Final = (1 << 64) - 1
_US_PER_S: Final = 1_000_000
_UNITS_PER_S: Final = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}

# Scalar dtype -> (Value oneof key byte, arrow type the column is normalised to).
_SCALARS: Final = {
    "Bytes": (b"\x0a", pa.large_binary()),
    "String": (b"\x12", pa.large_string()),
    "Int32": (b"\x18", pa.int32()),
    "Int64": (b"\x20", pa.int64()),
    "Float64": (b"\x29", pa.float64()),
    "Float32": (b"\x35", pa.float32()),
    "Bool": (b"\x38", pa.bool_()),
    "UnixTimestamp": (b"\x40", pa.int64()),
}
# Array(dtype) -> key bytes of its *_list_val field (11..18, wire type LEN).
_LIST_TAGS: Final = {
    "Bytes": b"\x5a",
    "String": b"\x62",
    "Int32": b"\x6a",
    "Int64": b"\x72",
    "Float64": b"\x7a",
    "Float32": b"\x82\x01",
    "Bool": b"\x8a\x01",
    "UnixTimestamp": b"\x92\x01",
}
_FIXED_WIDTH: Final = {"Float64": "<f8", "Float32": "<f4"}
# Rows up to this many bytes wide are built padded and turned into bytes by a void view per
# distinct length (~3x faster than slicing a flat buffer row by row); wider rows or too many
# distinct lengths go flat, where cost follows the bytes rather than n * width.
_MAX_PADDED_WIDTH: Final = 96
_MAX_GROUPS: Final = 24


# --- names and keys ---------------------------------------------------------------------


def field_name(view: str, feature: str) -> bytes:
    """Hash field of a feature: murmur3_x86_32 of ``view:feature``, 4 bytes little-endian."""
    return int(mmh3.hash(f"{view}:{feature}", signed=False)).to_bytes(4, "little")


def ts_field(view: str) -> bytes:
    """Hash field holding a view's event timestamp; not hashed, unlike feature fields."""
    return b"_ts:" + view.encode("utf-8")


def entity_key_prefix(join_keys: Sequence[str]) -> bytes:
    """Key bytes before the entity values (``serialize_entity_key_prefix``, v3)."""
    names = [name.encode("utf-8") for name in sorted(join_keys)]
    parts = [struct.pack("<I", len(names))]
    parts += [struct.pack("<II", _STRING_TAG, len(name)) + name for name in names]
    return b"".join(parts)


def _key_order(join_keys: Sequence[str], dtypes: Sequence[str], n_values: int) -> list[int]:
    """Positions of the join keys in Feast's key order (sorted by name), after validation."""
    if not len(join_keys) == len(dtypes) == n_values:
        raise CodecError(
            f"entity key: {len(join_keys)} join keys, {len(dtypes)} dtypes, {n_values} values"
        )
    if len(set(join_keys)) != len(join_keys):
        raise CodecError(f"entity key: duplicate join keys in {list(join_keys)}")
    for name, dtype in zip(join_keys, dtypes, strict=True):
        if dtype not in DTYPE_TAGS:
            raise CodecError(f"join key {name!r}: dtype {dtype!r} cannot be an entity key")
    return sorted(range(len(join_keys)), key=join_keys.__getitem__)


def encode_entity_keys(
    join_keys: Sequence[str],
    dtypes: Sequence[str],
    columns: Sequence[ArrayLike],
    project: str,
) -> list[bytes]:
    """Redis keys (v3 entity key + project) for every row of the join-key columns."""
    order = _key_order(join_keys, dtypes, len(columns))
    lengths = {len(columns[i]) for i in order}
    if len(lengths) > 1:
        raise CodecError(f"entity key columns {list(join_keys)} differ in length: {lengths}")
    if not lengths:
        raise CodecError("entity key columns: no join keys")
    n = lengths.pop()
    if n == 0:
        return []
    segments: list[_Rows | _Flat] = [_const_rows(entity_key_prefix(join_keys), n)]
    for i in order:
        segments += _key_segments(join_keys[i], dtypes[i], columns[i], n)
    segments.append(_const_rows(project.encode("utf-8"), n))
    return _join(segments)


def encode_entity_key(
    join_keys: Sequence[str], dtypes: Sequence[str], values: Sequence[object], project: str
) -> bytes:
    """Redis key for one entity; the per-request path, so plain ``struct`` and no arrays."""
    parts = [entity_key_prefix(join_keys)]
    for i in _key_order(join_keys, dtypes, len(values)):
        raw = _key_value_bytes(join_keys[i], dtypes[i], values[i])
        parts.append(struct.pack("<II", DTYPE_TAGS[dtypes[i]], len(raw)) + raw)
    parts.append(project.encode("utf-8"))
    return b"".join(parts)


def _key_value_bytes(name: str, dtype: str, value: object) -> bytes:
    what = f"join key {name!r} ({dtype}) row 0"
    if value is None or (isinstance(value, float) and value != value):
        raise CodecError(f"{what}: null entity value")
    try:
        if dtype == "String" and isinstance(value, str):
            return value.encode("utf-8")
        if dtype == "Bytes" and isinstance(value, bytes | bytearray):
            return bytes(value)
        if dtype in ("Int64", "Int32") and _is_int(value):
            return struct.pack("<q" if dtype == "Int64" else "<i", int(value))
        if dtype == "UnixTimestamp":
            if _is_int(value):
                return struct.pack("<q", int(value))
            return struct.pack("<q", int(_epoch([value], 1, what)[0][0]))
    except struct.error as exc:
        raise CodecError(f"{what}: {value!r} out of range") from exc
    raise CodecError(f"{what}: {type(value).__name__} value {value!r} is not a {dtype}")


def _is_int(value: object) -> TypeGuard[int | np.integer[Any]]:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _key_segments(name: str, dtype: str, column: ArrayLike, n: int) -> list[_Rows | _Flat]:
    """One join key's part of every key: u32 tag, u32 length, value bytes."""
    what = f"join key {name!r} ({dtype})"
    if dtype in ("String", "Bytes"):
        arr = _arrow(column, _SCALARS[dtype][1], what)
        _reject_nulls(_nulls(arr), what)
        body, lens = _binary_body(arr)
        header = np.empty((n, 8), np.uint8)
        header[:, :4] = np.frombuffer(struct.pack("<I", DTYPE_TAGS[dtype]), np.uint8)
        header[:, 4:] = lens.astype("<u4").view(np.uint8).reshape(n, 4)
        return [_fixed_rows(header), _Flat(body, lens)]
    if dtype == "UnixTimestamp":
        values, nulls = _epoch(column, 1, what)
    else:
        arr = _arrow(column, _SCALARS[dtype][1], what)
        nulls = _nulls(arr)
        values = _filled(arr).to_numpy(zero_copy_only=False)
    _reject_nulls(nulls, what)
    fmt = "<i4" if dtype == "Int32" else "<i8"
    width = np.dtype(fmt).itemsize
    raw = np.ascontiguousarray(values, dtype=fmt).view(np.uint8).reshape(n, width)
    return [
        _concat_rows(_const_rows(struct.pack("<II", DTYPE_TAGS[dtype], width), n), _fixed_rows(raw))
    ]


def _reject_nulls(nulls: Mask, what: str) -> None:
    if nulls.any():
        raise CodecError(f"{what}: null value at row {int(np.argmax(nulls))}")


# --- byte-building primitives -----------------------------------------------------------
# Output rows are built as a padded matrix (_Rows: (n, width) plus a length per row) when they
# are narrow, or as one flat buffer (_Flat: rows back to back plus a length per row) when they
# are not. Either becomes bytes objects only at the very end, in C where possible.


class _Rows(NamedTuple):
    mat: U8  # (n, width); row i's bytes are mat[i, :lens[i]]
    lens: I64


class _Flat(NamedTuple):
    data: U8
    lens: I64


def _const_rows(data: bytes, n: int) -> _Rows:
    mat = np.broadcast_to(np.frombuffer(data, np.uint8), (n, len(data)))
    return _Rows(mat, np.full(n, len(data), np.int64))


def _fixed_rows(mat: U8) -> _Rows:
    return _Rows(mat, np.full(mat.shape[0], mat.shape[1], np.int64))


def _varint_rows(values: U64, tag: bytes = b"") -> _Rows:
    """``tag`` + protobuf base-128 varint of each uint64 (negatives arrive two's complement)."""
    n = len(values)
    top = int(values.max()) if n else 0
    width = max(1, (top.bit_length() + 6) // 7)  # only as many 7-bit groups as the max needs
    nbytes = np.ones(n, np.int64)
    for group in range(1, width):
        nbytes += values >= np.uint64(1 << (7 * group))
    mat = np.empty((n, len(tag) + width), np.uint8)
    mat[:, : len(tag)] = np.frombuffer(tag, np.uint8)
    rest = values.copy()
    for group in range(width):  # column by column: 1-d passes beat an (n, width) uint64 temp
        column = (rest & np.uint64(0x7F)).astype(np.uint8)
        column |= (nbytes > group + 1).view(np.uint8) << 7  # continuation bit
        mat[:, len(tag) + group] = column
        rest >>= np.uint64(7)
    return _Rows(mat, nbytes + len(tag))


def _concat_rows(left: _Rows, right: _Rows) -> _Rows:
    n, width = left.mat.shape
    lens = left.lens + right.lens
    if n == 0 or int(left.lens.min()) == width:  # every left row full: plain stacking
        return _Rows(np.hstack([left.mat, right.mat]), lens)
    mat = np.zeros((n, width + right.mat.shape[1]), np.uint8)
    mat[:, :width] = left.mat
    # Right's padding lands past left.lens + right.lens too, where only padding lives.
    mat[np.arange(n)[:, None], left.lens[:, None] + np.arange(right.mat.shape[1])] = right.mat
    return _Rows(mat, lens)


def _padded(segment: _Rows | _Flat) -> _Rows:
    if isinstance(segment, _Rows):
        return segment
    data, lens = segment
    mat = np.zeros((len(lens), int(lens.max(initial=0))), np.uint8)
    mat[np.arange(mat.shape[1]) < lens[:, None]] = data
    return _Rows(mat, lens)


def _flat(segment: _Rows | _Flat) -> _Flat:
    if isinstance(segment, _Flat):
        return segment
    mat, lens = segment
    if int(lens.min(initial=0)) == mat.shape[1]:
        return _Flat(np.ascontiguousarray(mat).ravel(), lens)
    return _Flat(mat[np.arange(mat.shape[1]) < lens[:, None]], lens)


def _width(segment: _Rows | _Flat) -> int:
    return segment.mat.shape[1] if isinstance(segment, _Rows) else int(segment.lens.max(initial=0))


def _interleave(segments: Sequence[_Rows | _Flat]) -> _Flat:
    """Row i of the result is row i of every segment, concatenated in order."""
    parts = [_flat(seg) for seg in segments]
    piece_lens = np.stack([part.lens for part in parts], axis=1)  # (n, segments)
    # Which segment each output byte comes from; a mask per segment then places its bytes.
    owner = np.repeat(
        np.tile(np.arange(len(parts), dtype=np.uint8), len(piece_lens)), piece_lens.ravel()
    )
    out = np.empty(len(owner), np.uint8)
    for index, part in enumerate(parts):
        out[owner == index] = part.data
    return _Flat(out, piece_lens.sum(axis=1))


def _join(segments: Sequence[_Rows | _Flat]) -> list[bytes]:
    """Row i is row i of every segment, concatenated; as bytes, one per row."""
    if sum(_width(seg) for seg in segments) <= _MAX_PADDED_WIDTH:
        rows = _padded(segments[0])
        for seg in segments[1:]:
            rows = _concat_rows(rows, _padded(seg))
        return _rows_to_bytes(rows)
    return _flat_to_bytes(_interleave(segments))


def _fixed_bytes(mat: U8) -> list[bytes]:
    """Rows of a (n, width) matrix as bytes; a void view makes numpy create them in C."""
    n, width = mat.shape
    if width == 0:
        return [b""] * n
    rows: list[bytes] = np.ascontiguousarray(mat).view(f"V{width}").ravel().tolist()
    return rows


def _rows_to_bytes(rows: _Rows) -> list[bytes]:
    """One void-view pass per distinct row length, or one slice per row if lengths vary a lot."""
    widths = np.flatnonzero(np.bincount(rows.lens, minlength=1)).tolist()
    if len(widths) <= 1:
        return _fixed_bytes(rows.mat[:, : widths[0] if widths else 0])
    if len(widths) > _MAX_GROUPS:
        return _flat_to_bytes(_flat(rows))
    out = np.empty(len(rows.lens), dtype=object)
    for width in widths:
        idx = np.flatnonzero(rows.lens == width)
        if width == 0:
            out[idx] = b""
        else:
            block = np.ascontiguousarray(rows.mat[idx, :width]).view(f"V{width}").ravel()
            out[idx] = block.astype(object)  # an object array: numpy keeps the bytes verbatim
    result: list[bytes] = out.tolist()
    return result


def _flat_to_bytes(flat: _Flat) -> list[bytes]:
    data, lens = flat
    if len(lens) and int(lens.min()) == int(lens.max()):
        return _fixed_bytes(data.reshape(len(lens), int(lens[0])))
    ends = np.cumsum(lens).tolist()
    buf = data.tobytes()
    return [buf[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]


# --- columns in ---------------------------------------------------------------------------


def _arrow(column: ArrayLike, pa_type: Any, what: str, from_pandas: bool = True) -> Any:
    """``column`` as one pyarrow Array of ``pa_type``; NaN is null for numpy/python input."""
    if isinstance(column, np.ndarray) and column.ndim == 2 and pa.types.is_large_list(pa_type):
        column = list(column)
    elif isinstance(column, np.ndarray) and column.ndim != 1:
        raise CodecError(f"{what}: expected a 1-d column, got shape {column.shape}")
    try:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if isinstance(column, pa.Array):
            return column if column.type == pa_type else column.cast(pa_type)
        return pa.array(column, type=pa_type, from_pandas=from_pandas)
    except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
        raise CodecError(f"{what}: {_bad_row(column, pa_type, from_pandas)}{exc}") from exc


def _bad_row(column: ArrayLike, pa_type: Any, from_pandas: bool) -> str:
    """Error path only: find the first row that does not convert, for the message."""
    for row in range(len(column)):
        try:
            item = column[row : row + 1]
            if isinstance(item, pa.Array):
                item.cast(pa_type)
            else:
                pa.array(list(item), type=pa_type, from_pandas=from_pandas)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            return f"row {row}: {column[row]!r}: "
    return ""


def _nulls(arr: Any) -> Mask:
    if arr.null_count == 0:
        return np.zeros(len(arr), np.bool_)
    mask: Mask = arr.is_null().to_numpy(zero_copy_only=False)
    return mask


def _filled(arr: Any) -> Any:
    """``arr`` without nulls: each null slot holds the type's zero (Feast's list default)."""
    if arr.null_count == 0:
        return arr
    kind = arr.type
    if pa.types.is_boolean(kind):
        zero: object = False
    elif pa.types.is_large_binary(kind):
        zero = b""
    elif pa.types.is_large_string(kind):
        zero = ""
    else:
        zero = 0
    return arr.fill_null(pa.scalar(zero, type=kind))


def _binary_body(arr: Any) -> tuple[U8, I64]:
    """Data bytes and per-row lengths of a null-free large_string/large_binary array."""
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64, len(arr) + 1, arr.offset * 8)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lens: I64 = np.diff(offsets)
    return data[offsets[0] : offsets[-1]], lens


def _epoch(column: ArrayLike, per_second: int, what: str) -> tuple[I64, Mask]:
    """Integers since the epoch in 1/per_second units, floored, and the null mask.

    Timestamps of any unit or zone are converted; plain integers are taken to be in the
    target unit already (seconds for UnixTimestamp values, microseconds for event times).
    """
    if isinstance(column, np.ndarray) and column.dtype.kind == "M":
        unit = "s" if per_second == 1 else "us"
        # numpy floors when casting to a coarser unit, as Feast's materialize does.
        return column.astype(f"datetime64[{unit}]").view(np.int64), np.isnat(column)
    if isinstance(column, np.ndarray) and column.dtype.kind in "iu":
        return column.astype(np.int64), np.zeros(len(column), np.bool_)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not isinstance(column, pa.Array):
        try:
            column = pa.array(column, from_pandas=True)
        except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
            raise CodecError(f"{what}: not a timestamp column: {exc}") from exc
    return _epoch_arrow(column, per_second, what)


def _epoch_arrow(arr: Any, per_second: int, what: str) -> tuple[I64, Mask]:
    kind = arr.type
    if pa.types.is_null(kind):
        return np.zeros(len(arr), np.int64), np.ones(len(arr), np.bool_)
    if pa.types.is_timestamp(kind):
        unit = _UNITS_PER_S[kind.unit]  # arrow stores UTC whatever the zone
    elif pa.types.is_integer(kind):
        unit = per_second
    else:
        raise CodecError(f"{what}: expected timestamps or integers, got arrow type {kind}")
    nulls = _nulls(arr)
    values = _filled(arr.cast(pa.int64())).to_numpy(zero_copy_only=False)
    if unit > per_second:
        values = np.floor_divide(values, unit // per_second)
    elif unit < per_second:
        values = values * (per_second // unit)
    return values.astype(np.int64), nulls


# --- values -------------------------------------------------------------------------------


def encode_values(dtype: str, column: ArrayLike) -> list[bytes]:
    """Serialized ``feast.types.Value`` per row of ``column``, as Feast materialize writes."""
    if dtype in _SCALARS:
        return _encode_scalars(dtype, column)
    element = _list_element(dtype)
    if element in _LIST_TAGS:
        return _encode_lists(element, column)
    raise CodecError(f"unsupported dtype {dtype!r}")


def _list_element(dtype: str) -> str:
    return dtype[6:-1] if dtype.startswith("Array(") and dtype.endswith(")") else ""


def _encode_scalars(dtype: str, column: ArrayLike) -> list[bytes]:
    what = f"{dtype} column"
    tag, pa_type = _SCALARS[dtype]
    if dtype == "UnixTimestamp":
        seconds, nulls = _epoch(column, 1, what)
        seconds[nulls] = _INT64_MIN  # Feast's NaT, not b""
        return _rows_to_bytes(_varint_rows(seconds.view(np.uint64), tag))
    arr = _arrow(column, pa_type, what)
    nulls = _nulls(arr)
    if dtype in ("String", "Bytes"):
        body, lens = _binary_body(_filled(arr))
        header = _varint_rows(lens.view(np.uint64), tag)
        header.lens[nulls] = 0
        return _join([header, _Flat(body, lens)])
    values = _filled(arr).to_numpy(zero_copy_only=False)
    if dtype in _FIXED_WIDTH:
        nulls |= np.isnan(values)  # Feast stores no NaN: pd.isnull makes it null
        fmt = np.dtype(_FIXED_WIDTH[dtype])
        payload = np.ascontiguousarray(values, dtype=fmt).view(np.uint8)
        rows = _concat_rows(
            _const_rows(tag, len(values)), _fixed_rows(payload.reshape(-1, fmt.itemsize))
        )
    else:
        rows = _varint_rows(values.astype(np.int64).view(np.uint64), tag)
    rows.lens[nulls] = 0
    return _rows_to_bytes(rows)


def _encode_lists(element: str, column: ArrayLike) -> list[bytes]:
    what = f"Array({element}) column"
    if element == "UnixTimestamp":
        arr = _timestamp_lists(column, what)
    else:
        arr = _arrow(column, pa.large_list(_SCALARS[element][1]), what, from_pandas=False)
    nulls = _nulls(arr)
    counts = np.diff(arr.offsets.to_numpy()).astype(np.int64)
    counts[nulls] = 0  # flatten() drops whatever a null list spans, so count it as empty
    items = _list_items(element, arr.flatten(), what)
    item_ends = np.concatenate([[0], np.cumsum(items.lens)])
    list_ends = np.concatenate([[0], np.cumsum(counts)])
    payload = (item_ends[list_ends[1:]] - item_ends[list_ends[:-1]]).astype(np.int64)
    tag = _LIST_TAGS[element]
    if element in ("String", "Bytes"):  # repeated LEN field: each element carries its key
        header = _varint_rows(payload.view(np.uint64), tag)
    else:  # packed: one field-1 LEN record around all elements, left out when empty
        packed = _varint_rows(payload.view(np.uint64), b"\x0a")
        packed.lens[payload == 0] = 0
        size = packed.lens + payload
        header = _concat_rows(_varint_rows(size.view(np.uint64), tag), packed)
    header.lens[nulls] = 0
    return _join([header, _Flat(items.data, payload)])


def _timestamp_lists(column: ArrayLike, what: str) -> Any:
    """Lists of timestamps or of int seconds; the element type is inferred, not imposed."""
    if isinstance(column, np.ndarray) and column.ndim == 2:
        column = list(column)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not isinstance(column, pa.Array):
        try:
            column = pa.array(column)
        except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
            raise CodecError(f"{what}: {exc}") from exc
    if pa.types.is_null(column.type):  # every row None
        column = column.cast(pa.large_list(pa.int64()))
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        raise CodecError(f"{what}: expected lists, got arrow type {column.type}")
    return column


def _list_items(element: str, items: Any, what: str) -> _Flat:
    """Wire bytes of every list element, flat, with Feast's defaults for null elements."""
    if element == "UnixTimestamp":
        seconds, nulls = _epoch_arrow(items, 1, what)
        seconds[nulls] = _INT64_MIN
        return _flat(_varint_rows(seconds.view(np.uint64)))
    if element in ("String", "Bytes"):
        body, lens = _binary_body(_filled(items))
        header = _varint_rows(lens.view(np.uint64), b"\x0a")
        return _interleave([header, _Flat(body, lens)])
    values = _filled(items).to_numpy(zero_copy_only=False)
    if element in _FIXED_WIDTH:
        fmt = np.dtype(_FIXED_WIDTH[element])
        data = np.ascontiguousarray(values, dtype=fmt).view(np.uint8)
        return _Flat(data, np.full(len(values), fmt.itemsize, np.int64))
    return _flat(_varint_rows(values.astype(np.int64).view(np.uint64)))


# --- event timestamps ---------------------------------------------------------------------


def timestamp_micros(column: ArrayLike) -> I64:
    """Int64 UTC microseconds of a timestamp column (ints are taken as micros already)."""
    micros, nulls = _epoch(column, _US_PER_S, "timestamp column")
    _reject_nulls(nulls, "timestamp column")
    return micros


def encode_timestamps(column: ArrayLike) -> list[bytes]:
    """``google.protobuf.Timestamp`` bytes per row, as Feast writes ``_ts:{view}``."""
    micros = timestamp_micros(column)
    seconds = np.floor_divide(micros, _US_PER_S)
    nanos = (micros - seconds * _US_PER_S) * 1000
    secs = _varint_rows(seconds.view(np.uint64), b"\x08")
    secs.lens[seconds == 0] = 0  # proto3 leaves zero fields out: epoch 0 is b""
    frac = _varint_rows(nanos.view(np.uint64), b"\x10")
    frac.lens[nanos == 0] = 0
    return _rows_to_bytes(_concat_rows(secs, frac))


# --- decoding -----------------------------------------------------------------------------
# Hand-written protobuf reading: parsing into Value messages would need feast's generated
# classes (an 8 s import) and costs far more per value than reading the key byte directly.

_WIRE_VARINT: Final = 0
_WIRE_I64: Final = 1
_WIRE_LEN: Final = 2
_WIRE_I32: Final = 5
_UNPACK_DOUBLE: Final = struct.Struct("<d").unpack_from
_UNPACK_FLOAT: Final = struct.Struct("<f").unpack_from
# Oneof members of Value that this codec does not read (null_val, maps, sets, json, ...).
_OTHER_ONEOF: Final = frozenset([*range(19, 30), *range(32, 49)])
_NUMERIC_DTYPES: Final = frozenset(
    ["Int32", "Int64", "Float32", "Float64", "Bool", "UnixTimestamp"]
)
_NAN: Final = float("nan")
_SMALL_INT_KEYS: Final = frozenset([0x18, 0x20, 0x40])  # int32, int64, unix timestamp
_IS_SMALL_INT_KEY: Final = np.isin(np.arange(256), sorted(_SMALL_INT_KEYS))  # by key byte


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF  # protobuf truncates an int32 varint to its low 32 bits
    return value - (1 << 32) if value >= 1 << 31 else value


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Varint at ``pos`` and the position after it; IndexError when truncated."""
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _U64_MASK, pos
        shift += 7
        if shift > 63:
            raise CodecError("varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, varint value or raw payload) of each record in ``buf``."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _WIRE_VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire, value
            continue
        if wire == _WIRE_LEN:
            size, pos = _varint(buf, pos)
        elif wire in (_WIRE_I64, _WIRE_I32):
            size = 8 if wire == _WIRE_I64 else 4
        else:
            raise CodecError(f"field {number}: unsupported wire type {wire}")
        if pos + size > end:
            raise CodecError(f"field {number}: truncated payload")
        yield number, wire, buf[pos : pos + size]
        pos += size


def _scalar(number: int, wire: int, payload: int | bytes) -> object:
    """Python value of scalar field 1..8 of Value."""
    if isinstance(payload, int):
        if wire != _WIRE_VARINT or number not in (3, 4, 7, 8):
            raise CodecError(f"field {number}: unexpected varint")
        if number == 3:
            return _signed32(payload)
        return bool(payload) if number == 7 else _signed64(payload)
    expected = {1: _WIRE_LEN, 2: _WIRE_LEN, 5: _WIRE_I64, 6: _WIRE_I32}.get(number)
    if wire != expected:
        raise CodecError(f"field {number}: unexpected wire type {wire}")
    if number == 1:
        return payload
    if number == 2:
        return payload.decode("utf-8")
    return (_UNPACK_DOUBLE if number == 5 else _UNPACK_FLOAT)(payload)[0]


def _list_items_decoded(number: int, payload: bytes) -> list[Any]:
    """Elements of list field 11..18: a message whose field 1 repeats, packed or not."""
    element = number - 10  # string_list_val (12) holds what string_val (2) holds, etc.
    items: list[Any] = []
    for inner, wire, data in _fields(payload):
        if inner != 1:
            continue  # not part of the list message: protobuf skips it too
        if isinstance(data, bytes) and element in (3, 4, 5, 6, 7, 8):
            items += _packed(element, data)
        else:
            items.append(_scalar(element, wire, data))
    return items


def _packed(element: int, data: bytes) -> list[Any]:
    if element in (5, 6):
        width = 8 if element == 5 else 4
        if len(data) % width:
            raise CodecError(f"packed field: {len(data)} bytes is not a multiple of {width}")
        return list(struct.unpack(f"<{len(data) // width}{'d' if width == 8 else 'f'}", data))
    items, pos = [], 0
    while pos < len(data):
        value, pos = _varint(data, pos)
        items.append(_scalar(element, _WIRE_VARINT, value))
    return items


def decode_value(raw: bytes | None) -> object:
    """Python value of serialized Value bytes; None for null (b"", missing, INT64_MIN time).

    UnixTimestamp values come back as int seconds (lists too, INT64_MIN elements as None).
    A Value whose winning oneof field this codec does not read raises CodecError
    ``unknown_field_N``.
    """
    if not raw:
        return None
    try:
        number, value = _last_oneof(raw)
    except (IndexError, struct.error, ValueError) as exc:  # ValueError: CodecError, bad UTF-8
        raise CodecError(f"malformed Value bytes {raw[:40].hex()}: {exc}") from exc
    if number in _OTHER_ONEOF:
        raise CodecError(f"unknown_field_{number}: Value bytes {raw[:40].hex()}")
    if number == 8 and value == _INT64_MIN:
        return None
    if number == 18 and isinstance(value, list):
        return [None if item == _INT64_MIN else item for item in value]
    return value


def _last_oneof(raw: bytes) -> tuple[int, object]:
    number, value = 0, None
    for field, wire, payload in _fields(raw):
        if 1 <= field <= 8:
            number, value = field, _scalar(field, wire, payload)
        elif 11 <= field <= 18:
            if not isinstance(payload, bytes):
                raise CodecError(f"field {field}: unexpected wire type {wire}")
            items = _list_items_decoded(field, payload)
            if field == number and isinstance(value, list):  # a repeated message field merges
                value.extend(items)
            else:
                number, value = field, items
        elif field in _OTHER_ONEOF:
            number, value = field, None
        # any other field number is not in Value: protobuf keeps it as unknown; so do we
    return number, value


def decode_numeric(dtype: str, raws: Sequence[bytes | None], out: npt.NDArray[np.float64]) -> None:
    """Decode scalar numeric/bool Values into float64 ``out``; NaN for null or missing."""
    if len(out) != len(raws):
        raise CodecError(f"decode_numeric: {len(raws)} values for {len(out)} slots")
    out[:] = numeric_values(dtype, raws)


def numeric_values(dtype: str, raws: Sequence[bytes | None]) -> list[float]:
    """Scalar numeric/bool Values as Python numbers (NaN for null or missing), in order.

    The server's hot path: single-field values are read straight from the key byte; anything
    else (multiple fields, odd encodings) takes the general parser. Like Feast, the stored
    field need not match ``dtype``; a non-numeric value raises CodecError.
    """
    if dtype not in _NUMERIC_DTYPES:
        raise CodecError(f"decode_numeric: dtype {dtype!r} is not numeric")
    result: list[float] = []
    append = result.append
    for row, raw in enumerate(raws):
        if not raw:
            append(_NAN)
            continue
        key = raw[0]
        if key == 0x29 and len(raw) == 9:
            append(_UNPACK_DOUBLE(raw, 1)[0])
        elif key == 0x35 and len(raw) == 5:
            append(_UNPACK_FLOAT(raw, 1)[0])  # float32 widened exactly, as np.float32 does
        elif key in _SMALL_INT_KEYS and len(raw) == 2 and raw[1] < 0x80:
            append(raw[1])  # 0..127: the varint is the byte
        elif key in _SMALL_INT_KEYS and len(raw) == 3 and raw[1] >= 0x80 > raw[2]:
            append((raw[1] & 0x7F) | (raw[2] << 7))  # 128..16383, common for counts
        elif key in _VARINT_NUMBERS and (value := _sole_varint(raw)) is not None:
            append(_VARINT_NUMBERS[key](value))
        else:
            append(_numeric_slow(dtype, raw, row))
    return result


def numeric_array(dtype: str, raws: Sequence[bytes | None]) -> npt.NDArray[np.float64]:
    """`numeric_values` as a float64 array, vectorised over the common encodings.

    For long reads (a 100-row ETA request has ~2,700 values): the usual one-field encodings
    (double, float, int varints of one or two bytes) are read by numpy from the joined bytes
    in ~30 operations whatever the count; the rest takes `numeric_values` one by one.
    """
    if dtype not in _NUMERIC_DTYPES:
        raise CodecError(f"decode_numeric: dtype {dtype!r} is not numeric")
    present: Sequence[bytes] = [raw or b"" for raw in raws] if None in raws else raws  # type: ignore[assignment]
    lengths = np.fromiter(map(len, present), np.intp, len(present))
    flat = np.frombuffer(b"".join(present) + bytes(3), np.uint8)  # padded: key, first, second
    starts = np.cumsum(lengths) - lengths
    key, first, second = flat[starts], flat[starts + 1], flat[starts + 2]
    out = np.full(len(present), _NAN)
    done = lengths == 0
    for key_byte, width, numpy_type in ((0x29, 8, "<f8"), (0x35, 4, "<f4")):
        found = (key == key_byte) & (lengths == width + 1)
        if found.any():
            at = starts[found][:, None] + np.arange(1, width + 1)
            out[found] = flat[at].view(numpy_type)[:, 0]
            done |= found
    small_int = _IS_SMALL_INT_KEY[key]
    one_byte = small_int & (lengths == 2) & (first < 0x80)
    out[one_byte] = first[one_byte]
    two_bytes = small_int & (lengths == 3) & (first >= 0x80) & (second < 0x80)
    out[two_bytes] = (first[two_bytes] & 0x7F) | (second[two_bytes].astype(np.int64) << 7)
    rest = np.flatnonzero(~(done | one_byte | two_bytes))
    if len(rest):
        try:
            out[rest] = numeric_values(dtype, [present[i] for i in rest.tolist()])
        except CodecError:
            numeric_values(dtype, raws)  # raises again, naming the right row
            raise
    return out


def _sole_varint(raw: bytes) -> int | None:
    """The varint after the key byte if it is all that follows, else None."""
    last = raw[-1]
    if last >= 0x80 or not 2 <= len(raw) <= 11:  # protobuf varints are at most 10 bytes
        return None
    value = shift = 0
    for byte in raw[1:-1]:
        if byte < 0x80:  # the varint ends early: more fields follow
            return None
        value |= (byte - 0x80) << shift
        shift += 7
    return (value | (last << shift)) & _U64_MASK


def _timestamp_number(value: int) -> float:
    seconds = _signed64(value)
    return _NAN if seconds == _INT64_MIN else float(seconds)


# Key byte of a varint scalar field -> its value as float64.
_VARINT_NUMBERS: Final[dict[int, Callable[[int], float]]] = {
    0x18: lambda value: float(_signed32(value)),
    0x20: lambda value: float(_signed64(value)),
    0x38: lambda value: 1.0 if value else 0.0,
    0x40: _timestamp_number,
}


def _numeric_slow(dtype: str, raw: bytes, row: int) -> float:
    try:
        value = decode_value(raw)
    except CodecError as exc:
        raise CodecError(f"{dtype} row {row}: {exc}") from exc
    if value is None:
        return _NAN
    if isinstance(value, int | float):  # bool is an int
        return float(value)
    raise CodecError(f"{dtype} row {row}: stored value {value!r} is not numeric")


def decode_timestamp_micros(raw: bytes | None) -> int | None:
    """UTC microseconds of ``google.protobuf.Timestamp`` bytes; None when missing or empty."""
    if not raw:
        return None
    seconds = nanos = 0
    try:
        for number, _, payload in _fields(raw):
            if isinstance(payload, int) and number == 1:
                seconds = _signed64(payload)
            elif isinstance(payload, int) and number == 2:
                nanos = _signed32(payload)
    except (IndexError, CodecError) as exc:
        raise CodecError(f"malformed Timestamp bytes {raw[:40].hex()}") from exc
    return seconds * _US_PER_S + nanos // 1000
