"""Feast 0.67's Redis format, the writers' half: whole columns of keys, Values and Timestamps.

Concern: the exact bytes Feast 0.67 writes to and reads from its Redis online store with
``entity_key_serialization_version = 3`` (see FEAST_REDIS_FORMAT.md in the design notes): the hash
key, the hash field names, serialized ``feast.types.Value`` feature values and the
``google.protobuf.Timestamp`` under ``_ts:{view}``.

Invariants:
- Pure: no I/O; neither redis nor feast is imported. Names, single keys and decoding live
  in codec.py, which the request path imports without pyarrow.
- Encoders are byte-identical to Feast's materialize path (tests use Feast as the oracle).
- Null (None/NaN/NaT) encodes to ``b""``, except UnixTimestamp, which Feast writes as
  ``unix_timestamp_val = INT64_MIN``; both decode to None. List elements are never null: a
  null element becomes what Feast's materialize writes for it ("", b"", False, INT64_MIN, and
  NaN for floats), and a null element in a list of integers is refused, as Feast refuses it.
- The types this module has no column encoder for (Map, Json, Struct, Uuid, Decimal, sets,
  nested lists, ...) go through python_values.py, Feast's conversion ported, row by row.
- Column encoders work on whole numpy/pyarrow buffers; the only per-row Python work is
  creating each output ``bytes`` object. No protobuf message is ever built.
- Timestamps are int64 UTC microseconds (or whole seconds, floored, for UnixTimestamp
  values); naive datetimes are UTC.
- Every rejection is a CodecError naming the dtype or join key and, where known, the row.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final, NamedTuple, TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from serving.store.codec import DTYPE_TAGS, CodecError, entity_key_prefix, key_order
from serving.store.python_values import encode_python_values, value_kind

__all__ = ["encode_entity_keys", "encode_timestamps", "encode_values", "timestamp_micros"]

U8: TypeAlias = npt.NDArray[np.uint8]
I64: TypeAlias = npt.NDArray[np.int64]
U64: TypeAlias = npt.NDArray[np.uint64]
Mask: TypeAlias = npt.NDArray[np.bool_]
# pyarrow ships no type information, so its arrays are Any to mypy.
ArrayLike: TypeAlias = "pa.Array | pa.ChunkedArray | npt.NDArray[Any] | Sequence[Any]"

_STRING_TAG: Final = 2
_INT64_MIN: Final = -(1 << 63)
_U64_MASK: Final = (1 << 64) - 1
_US_PER_S: Final = 1_000_000
_UNITS_PER_S: Final = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}

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


def encode_entity_keys(
    join_keys: Sequence[str],
    dtypes: Sequence[str],
    columns: Sequence[ArrayLike],
    project: str,
    version: int = 3,
) -> list[bytes]:
    """Redis keys (entity key of `version`, v3 by default, + project) for every row."""
    order = key_order(join_keys, dtypes, len(columns))
    lengths = {len(columns[i]) for i in order}
    if len(lengths) > 1:
        raise CodecError(f"entity key columns {list(join_keys)} differ in length: {lengths}")
    if not lengths:
        raise CodecError("entity key columns: no join keys")
    n = lengths.pop()
    if n == 0:
        return []
    segments: list[_Rows | _Flat] = [_const_rows(entity_key_prefix(join_keys, version), n)]
    for i in order:
        segments += _key_segments(join_keys[i], dtypes[i], columns[i], n, version)
    segments.append(_const_rows(project.encode("utf-8"), n))
    return _join(segments)


def _key_segments(
    name: str, dtype: str, column: ArrayLike, n: int, version: int = 3
) -> list[_Rows | _Flat]:
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
    if dtype == "Int64" and version < 2:  # version 1: Int64 keys in 4 bytes, as Feast packs them
        _reject_beyond_int32(np.asarray(values, np.int64), what)
    fmt = "<i4" if dtype == "Int32" or (dtype == "Int64" and version < 2) else "<i8"
    width = np.dtype(fmt).itemsize
    raw = np.ascontiguousarray(values, dtype=fmt).view(np.uint8).reshape(n, width)
    return [
        _concat_rows(_const_rows(struct.pack("<II", DTYPE_TAGS[dtype], width), n), _fixed_rows(raw))
    ]


def _reject_beyond_int32(values: I64, what: str) -> None:
    beyond = (values < -(1 << 31)) | (values >= 1 << 31)
    if beyond.any():
        row = int(np.argmax(beyond))
        raise CodecError(
            f"{what}: row {row}: {int(values[row])} does not fit the 4 bytes "
            "entity_key_serialization_version 1 gives an Int64 join key "
            "(Feast's materialize fails on it too)"
        )


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
    if dtype in ("PdfBytes", "ImageBytes"):  # bytes_val, as Bytes
        return _encode_scalars("Bytes", column)
    element = _list_element(dtype)
    if element in _LIST_TAGS:
        return _encode_lists(element, column)
    if value_kind(dtype) is not None:
        return encode_python_values(dtype, python_objects(column))
    raise CodecError(f"unsupported dtype {dtype!r}")


def column_encoder(dtype: str) -> str | None:
    """ "columns" for dtypes encoded from whole columns, "rows" for those converted row by row
    (python_values.py), None for dtypes Carrara does not write."""
    if (
        dtype in _SCALARS
        or dtype in ("PdfBytes", "ImageBytes")
        or _list_element(dtype) in _LIST_TAGS
    ):
        return "columns"
    return "rows" if value_kind(dtype) is not None else None


def python_objects(column: ArrayLike) -> Any:
    """What Feast's converter gets: an Arrow column's `to_numpy(zero_copy_only=False)`."""
    if isinstance(column, pa.ChunkedArray | pa.Array):
        return column.to_numpy(zero_copy_only=False)
    return column


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
    flat = arr.flatten()
    if element in ("Int32", "Int64") and flat.null_count:
        ends = np.cumsum(counts)
        row = int(np.searchsorted(ends, int(np.argmax(_nulls(flat))), side="right"))
        raise CodecError(
            f"{what}: row {row} holds a null element; Feast's materialize refuses it "
            "(the list reads as floats), so Carrara does too"
        )
    items = _list_items(element, flat, what)
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
    if element in _FIXED_WIDTH and items.null_count:  # Feast writes a null float element as NaN
        items = items.fill_null(pa.scalar(float("nan"), type=items.type))
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
