"""Feast's file registry (registry.db), read and amended without importing Feast.

Concern: the materialized intervals Feast keeps per feature view, so that `feast
materialize-incremental` and `carrara materialize --incremental` resume from the same point.

registry.db is one serialized `feast.core.Registry` protobuf. We edit it at the wire level:
the message is a sequence of (field number, wire type, payload) records, and only these are
read or rewritten (numbers from feast/protos/feast/core/{Registry,FeatureView}.proto, 0.67):

    Registry     4 version_id (string), 5 last_updated (Timestamp), 6 feature_views (repeated),
                 14 stream_feature_views (repeated)
    FeatureView  1 spec {1 name, 2 project, 6 ttl}, 2 meta
    StreamFeatureView  1 spec {1 name, 2 project, 9 ttl}, 2 meta
    Meta         2 last_updated_timestamp, 3 materialization_intervals {1 start, 2 end}, 6 state

Also read here: whether a view's spec holds a ttl at all. Feast's Python objects turn a missing
ttl (declared ttl=None) into timedelta(0); the registry bytes keep the two apart.

Invariants:
- Every other byte is copied verbatim, so fields this module does not know survive untouched.
- A rewritten field is placed where protobuf's canonical (field-number) order puts it, so Feast
  re-serializing what we wrote gives the same bytes. Feast's own `apply_materialization`
  additionally moves the view to the end of the list; order in a repeated field is not meaning.
- Recording mirrors `Registry.apply_materialization`: append the interval, set the view's
  last_updated_timestamp to now and its state to AVAILABLE_ONLINE (4), then, as Feast's file
  store does on every commit, a new registry version_id and last_updated.
- The file is replaced atomically (temp file + rename); a registry that changed on disk while
  we computed the new bytes is not overwritten.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from serving.errors import PlanError
from serving.files import replacing

AVAILABLE_ONLINE = 4
_VIEW_FIELDS = (6, 14)  # Registry.feature_views, Registry.stream_feature_views (same layout)
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


@dataclass(frozen=True)
class _Record:
    number: int
    raw: bytes  # the whole record: key, (length,) payload
    payload: bytes  # LEN payload, or the raw value bytes for other wire types


class RegistryFormatError(PlanError):
    """registry.db is not a Feast Registry protobuf this module can read."""


# --- wire format ------------------------------------------------------------------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:  # bounded: a varint is at most 10 bytes
        if pos >= len(buf) or shift > 63:
            raise RegistryFormatError("truncated or oversized varint in registry")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> two's complement, as protobuf writes it
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _records(buf: bytes) -> Iterator[_Record]:
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, end = _read_varint(buf, pos)
        elif wire == _LEN:
            size, pos = _read_varint(buf, pos)
            end = pos + size
        elif wire in (_I64, _I32):
            end = pos + (8 if wire == _I64 else 4)
        else:
            raise RegistryFormatError(f"unsupported wire type {wire} in registry")
        if end > len(buf):
            raise RegistryFormatError("truncated record in registry")
        yield _Record(number, buf[start:end], buf[pos:end])
        pos = end


def _len_record(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(len(payload)) + payload


def _timestamp(moment: datetime) -> bytes:
    """google.protobuf.Timestamp payload (zero parts left out, as proto3 does)."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    delta = aware - datetime(1970, 1, 1, tzinfo=UTC)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    seconds, micro = divmod(micros, 1_000_000)
    out = _varint(1 << 3) + _varint(seconds) if seconds else b""
    return out + (_varint(2 << 3) + _varint(micro * 1000) if micro else b"")


def _parse_timestamp(payload: bytes) -> datetime:
    seconds = nanos = 0
    for rec in _records(payload):
        if rec.number in (1, 2):
            value, _ = _read_varint(rec.payload, 0)
            value = value - (1 << 64) if value >= 1 << 63 else value
            seconds, nanos = (value, nanos) if rec.number == 1 else (seconds, value)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + timedelta(seconds=seconds, microseconds=nanos // 1000)


def _set_field(records: list[bytes], numbers: list[int], number: int, raw: bytes) -> None:
    """Replace every `number` record by `raw`, placed in canonical field order."""
    keep = [(n, r) for n, r in zip(numbers, records, strict=True) if n != number]
    at = next((i for i, (n, _) in enumerate(keep) if n > number), len(keep))
    keep.insert(at, (number, raw))
    numbers[:] = [n for n, _ in keep]
    records[:] = [r for _, r in keep]


def _append_repeated(records: list[bytes], numbers: list[int], number: int, raw: bytes) -> None:
    at = next((i for i, n in enumerate(numbers) if n > number), len(numbers))
    numbers.insert(at, number)
    records.insert(at, raw)


# --- feature views ------------------------------------------------------------------------


def _view_identity(view: bytes) -> tuple[str, str]:
    name = project = ""
    for rec in _records(view):
        if rec.number == 1:
            for field in _records(rec.payload):
                if field.number == 1:
                    name = field.payload.decode("utf-8")
                elif field.number == 2:
                    project = field.payload.decode("utf-8")
    return name, project


def _meta(view: bytes) -> bytes:
    return next((r.payload for r in _records(view) if r.number == 2), b"")


def _intervals(meta: bytes) -> list[tuple[datetime, datetime]]:
    out = []
    for rec in _records(meta):
        if rec.number == 3:
            parts = {f.number: f.payload for f in _records(rec.payload)}
            out.append((_parse_timestamp(parts.get(1, b"")), _parse_timestamp(parts.get(2, b""))))
    return out


def _amend_view(view: bytes, start: datetime, end: datetime, now: datetime) -> bytes:
    meta = list(_records(_meta(view)))
    numbers, records = [r.number for r in meta], [r.raw for r in meta]
    interval = _len_record(1, _timestamp(start)) + _len_record(2, _timestamp(end))
    _append_repeated(records, numbers, 3, _len_record(3, interval))
    _set_field(records, numbers, 2, _len_record(2, _timestamp(now)))
    _set_field(records, numbers, 6, _varint(6 << 3 | _VARINT) + _varint(AVAILABLE_ONLINE))
    outer = list(_records(view))
    out_numbers, out_records = [r.number for r in outer], [r.raw for r in outer]
    _set_field(out_records, out_numbers, 2, _len_record(2, b"".join(records)))
    return b"".join(out_records)


def views_without_ttl(registry: bytes, project: str) -> set[str]:
    """Feature views (and stream feature views) of `project` whose spec holds no ttl."""
    ttl_field = {6: 6, 14: 9}  # registry field of the view kind -> its spec's ttl field
    found = set()
    for rec in _records(registry):
        if rec.number not in ttl_field:
            continue
        name, view_project = _view_identity(rec.payload)
        spec = next((r.payload for r in _records(rec.payload) if r.number == 1), b"")
        has_ttl = any(r.number == ttl_field[rec.number] for r in _records(spec))
        if view_project == project and not has_ttl:
            found.add(name)
    return found


def materialized_until(registry: bytes, project: str) -> dict[str, datetime]:
    """Per feature view of `project`, the latest end of its materialized intervals."""
    until: dict[str, datetime] = {}
    for rec in _records(registry):
        if rec.number not in _VIEW_FIELDS:
            continue
        name, view_project = _view_identity(rec.payload)
        ends = [end for _, end in _intervals(_meta(rec.payload))]
        if view_project == project and ends:
            until[name] = max(ends)
    return until


def with_materialization(
    registry: bytes,
    project: str,
    intervals: Mapping[str, tuple[datetime, datetime]],
    now: datetime,
) -> bytes:
    """The registry bytes with each view's (start, end) interval recorded, as Feast does."""
    missing = set(intervals)
    records, numbers = [], []
    for rec in _records(registry):
        raw = rec.raw
        if rec.number in _VIEW_FIELDS:
            name, view_project = _view_identity(rec.payload)
            if view_project == project and name in missing:
                missing.discard(name)
                raw = _len_record(rec.number, _amend_view(rec.payload, *intervals[name], now))
        records.append(raw)
        numbers.append(rec.number)
    if missing:
        raise PlanError(f"feature views {sorted(missing)} are not in the Feast registry")
    _set_field(records, numbers, 4, _len_record(4, str(uuid.uuid4()).encode()))
    _set_field(records, numbers, 5, _len_record(5, _timestamp(now)))
    return b"".join(records)


# --- the file -----------------------------------------------------------------------------


def read_registry(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PlanError(f"cannot read the Feast registry {path}: {exc.strerror}") from exc


def record_materialization(
    path: Path,
    project: str,
    intervals: Mapping[str, tuple[datetime, datetime]],
    now: datetime | None = None,
) -> tuple[str, str]:
    """Record `intervals` in the registry file; returns its SHA-256 before and after."""
    before = read_registry(path)
    after = with_materialization(before, project, intervals, now or datetime.now(UTC))
    try:
        with replacing(path) as tmp:
            tmp.write_bytes(after)
            if path.read_bytes() != before:  # someone (feast apply?) wrote it meanwhile
                raise PlanError(f"the Feast registry {path} changed during materialize; run again")
    except OSError as exc:
        raise PlanError(f"cannot write the Feast registry {path}: {exc.strerror}") from exc
    return hashlib.sha256(before).hexdigest(), hashlib.sha256(after).hexdigest()
