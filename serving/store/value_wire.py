"""Feast's `Value` protobuf on the wire: the bytes of scalar, list, set and map messages.

Concern: writing `feast.types.Value` messages without protobuf, for python_values.py: the
oneof field of each Feast ValueType, varints, length-delimited fields, packed numeric lists,
and Map messages with their entries in key order (protobuf's deterministic order).

Invariants: a oneof member is written even when it holds its default (`12 00` is ""); an
empty packed list leaves its field 1 out; a Map entry leaves out an empty key, as protobuf
does, but always holds its value. Out-of-range integers raise ValueError.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final

_MASK64: Final = (1 << 64) - 1
# Value oneof field of each Feast ValueType written here.
FIELD: Final = {
    "BYTES": 1, "PDF_BYTES": 1, "IMAGE_BYTES": 1, "STRING": 2, "INT32": 3, "INT64": 4,
    "DOUBLE": 5, "FLOAT": 6, "BOOL": 7, "UNIX_TIMESTAMP": 8,
    "BYTES_LIST": 11, "STRING_LIST": 12, "INT32_LIST": 13, "INT64_LIST": 14, "DOUBLE_LIST": 15,
    "FLOAT_LIST": 16, "BOOL_LIST": 17, "UNIX_TIMESTAMP_LIST": 18, "MAP": 20, "MAP_LIST": 21,
    "BYTES_SET": 22, "STRING_SET": 23, "INT32_SET": 24, "INT64_SET": 25, "DOUBLE_SET": 26,
    "FLOAT_SET": 27, "BOOL_SET": 28, "UNIX_TIMESTAMP_SET": 29, "JSON": 32, "JSON_LIST": 33,
    "STRUCT": 34, "STRUCT_LIST": 35, "UUID": 36, "TIME_UUID": 37, "UUID_LIST": 38,
    "TIME_UUID_LIST": 39, "UUID_SET": 40, "TIME_UUID_SET": 41, "VALUE_LIST": 42,
    "VALUE_SET": 43, "DECIMAL": 44, "DECIMAL_LIST": 45, "DECIMAL_SET": 46,
}  # fmt: skip
# Element kind of list and set messages: how one element is written.
ELEMENT: Final = {
    "BYTES": "bytes", "STRING": "string", "JSON": "string", "UUID": "string",
    "TIME_UUID": "string", "DECIMAL": "string", "INT32": "int32", "INT64": "varint",
    "UNIX_TIMESTAMP": "varint", "DOUBLE": "double", "FLOAT": "float", "BOOL": "bool",
}  # fmt: skip


def varint(n: int) -> bytes:
    if 0 <= n < 0x80:  # most tags and lengths: one byte
        return _ONE_BYTE[n]
    n &= _MASK64
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_ONE_BYTE: Final = tuple(bytes((n,)) for n in range(0x80))


def len_field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def scalar_bytes(kind: str, value: Any) -> bytes:
    number = FIELD[kind]
    if kind in ("STRING", "JSON", "UUID", "TIME_UUID", "DECIMAL"):
        return len_field(number, value.encode("utf-8"))
    if kind in ("BYTES", "PDF_BYTES", "IMAGE_BYTES"):
        return len_field(number, bytes(value))
    if kind == "DOUBLE":
        return varint(number << 3 | 1) + struct.pack("<d", value)
    if kind == "FLOAT":
        return varint(number << 3 | 5) + struct.pack("<f", value)
    if kind == "INT32" and not -(1 << 31) <= value < 1 << 31:
        raise ValueError(f"value {value} is out of the Int32 range")
    if kind in ("INT64", "UNIX_TIMESTAMP") and not -(1 << 63) <= value < 1 << 63:
        raise ValueError(f"value {value} is out of the Int64 range")
    return varint(number << 3) + varint(int(value))


def collection_bytes(number: int, element: str, items: Sequence[Any]) -> bytes:
    """A *List / *Set message (repeated field 1) as field `number` of Value."""
    if element in ("string", "bytes"):
        body = b"".join(
            len_field(1, i.encode("utf-8") if element == "string" else bytes(i)) for i in items
        )
    elif element == "double":
        body = len_field(1, struct.pack(f"<{len(items)}d", *items)) if items else b""
    elif element == "float":
        body = len_field(1, struct.pack(f"<{len(items)}f", *items)) if items else b""
    else:
        packed = b"".join(varint(int(i)) for i in items)
        body = len_field(1, packed) if items else b""
    return len_field(number, body)


def map_bytes(entries: dict[str, bytes]) -> bytes:
    """A Map message: entries (key -> serialized Value) sorted by key, as deterministic
    protobuf writes them; a default key or value is left out of its entry, as protobuf does."""
    out = []
    for key in sorted(entries, key=lambda k: k.encode("utf-8")):
        entry = (len_field(1, key.encode("utf-8")) if key else b"") + len_field(2, entries[key])
        out.append(len_field(1, entry))
    return b"".join(out)
