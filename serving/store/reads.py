"""Online reads: a read plan's features for entity rows, in one pipelined round trip.

Reads (the request path) follow a `ReadPlan` (read_plan.py) resolved at start-up: per
request only the given key values are encoded, ONE pipeline is sent (an HMGET of all fields
per distinct key per key group) on the calling thread's own link (connection.py), through the
feature cache when it is on (feature_cache.py: cached replies are decoded like fresh ones), and
the replies are decoded straight into a float64 matrix.
- `values` is NaN wherever `status` is not PRESENT: a key, field or stored value that is
  absent or null (b""), or a String whose bytes are not in its `categories`, is MISSING.
- STALE: the view's `_ts` is older than now - ttl (ttl 0: never stale). Feast does not enforce
  ttl on Redis reads; Carrara does. A row without `_ts` has event time 0, as in Feast.
- `read_raw` returns Python values of any dtype (None unless PRESENT), for GetOnlineFeatures.

"""

from __future__ import annotations

import enum
import functools
import math
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from serving.errors import DataError, InvalidRequestError
from serving.store import codec
from serving.store.connection import READ_TIMEOUT_S, KeyedReader
from serving.store.read_plan import NUMERIC_DTYPES, FeatureRead, KeyGroup, ReadPlan

VECTOR_DECODE_FROM = 512  # values per read from which numpy decodes faster than a Python loop
_NAN = math.nan
_US = 1_000_000
MISSING, PRESENT, STALE = 0, 1, 2  # values of a status matrix


class Status(enum.IntEnum):
    MISSING = MISSING
    PRESENT = PRESENT
    STALE = STALE


@dataclass(frozen=True)
class OnlineRead:
    values: npt.NDArray[np.float64]  # (rows, features); NaN unless PRESENT
    status: npt.NDArray[np.uint8]  # (rows, features) of Status
    event_ts_us: npt.NDArray[np.int64]  # (rows, views); 0 when absent
    missing_per_row: npt.NDArray[np.int32]  # features read that are not PRESENT


@dataclass(frozen=True)
class RawRead:
    values: list[list[object]]  # per feature, per row; None unless PRESENT
    status: npt.NDArray[np.uint8]  # (rows, features) of Status
    event_ts_us: npt.NDArray[np.int64]  # (rows, views); 0 when absent


def read(
    connection: KeyedReader,
    plan: ReadPlan,
    entities: Mapping[str, Sequence[Any]],
    now_s: float | None = None,
    timeout_s: float | None = None,
) -> OnlineRead:
    """The plan's feature matrix for the entity rows: one round trip, decoded to float64."""
    n, fetched = _fetch(connection, plan, entities, timeout_s)
    values_at, ts_at = plan.destinations(n)
    pairs = zip(plan.groups, fetched, strict=True)
    raws = [raw for group, rows in pairs for row in rows for raw in group.numeric(row)]
    try:  # the dtype only names errors
        decoded = (
            codec.numeric_values("Float64", raws)
            if len(raws) < VECTOR_DECODE_FROM
            else codec.numeric_array("Float64", raws)
        )
    except codec.CodecError:
        _raise_bad_value(plan, fetched)
    values = np.full((n, len(plan.feature_names)), _NAN)
    values.reshape(-1)[values_at] = decoded
    checksum = _sum(decoded)  # NaN if any value is missing (inf - inf: also checked)
    for group, rows in zip(plan.groups, fetched, strict=True):
        for feature in group.categorical:
            get = (feature.categories or {}).get
            codes = [get(row[feature.field_at] or b"", _NAN) for row in rows]
            values[:, feature.column] = codes
            checksum += sum(codes)
    event_ts = np.zeros((n, len(plan.view_names)), np.int64)
    event_ts.reshape(-1)[ts_at] = _timestamps(plan, fetched)
    now_us = int((time.time() if now_s is None else now_s) * _US)
    stale_views = _stale(plan, event_ts, now_us)
    if not math.isnan(checksum) and not stale_views.any():  # the common case: all there
        status, missing = plan.all_present(n)
        return OnlineRead(values, status, event_ts, missing)
    read = values[:, plan.read_columns]
    present = ~np.isnan(read)
    stale = stale_views[:, plan.slot_of_column] & present
    status = np.zeros(values.shape, np.uint8)
    status[:, plan.read_columns] = np.where(stale, STALE, present)
    if stale.any():
        values[:, plan.read_columns] = np.where(stale, _NAN, read)
    missing = (~present | stale).sum(axis=1, dtype=np.int32)
    return OnlineRead(values, status, event_ts, missing)


def read_raw(
    connection: KeyedReader,
    plan: ReadPlan,
    entities: Mapping[str, Sequence[Any]],
    now_s: float | None = None,
    timeout_s: float | None = None,
) -> RawRead:
    """Every feature of the plan as a Python value (codec.decode_value), any dtype."""
    n, fetched = _fetch(connection, plan, entities, timeout_s)
    event_ts = np.zeros((n, len(plan.view_names)), np.int64)
    event_ts.reshape(-1)[plan.destinations(n)[1]] = _timestamps(plan, fetched)
    fresh = ~_stale(plan, event_ts, int((time.time() if now_s is None else now_s) * _US))
    values: list[list[object]] = [[None] * n for _ in plan.feature_names]
    status = np.zeros((n, len(plan.feature_names)), np.uint8)
    for group, rows in zip(plan.groups, fetched, strict=True):
        for feature in group.features:
            column, is_fresh = values[feature.column], fresh[:, feature.slot].tolist()
            for i, row in enumerate(rows):
                value = _decode_raw(feature, row[feature.field_at])
                if value is not None:
                    status[i, feature.column] = PRESENT if is_fresh[i] else STALE
                    column[i] = value if is_fresh[i] else None
    return RawRead(values, status, event_ts)


def _fetch(
    connection: KeyedReader,
    plan: ReadPlan,
    entities: Mapping[str, Sequence[Any]],
    timeout_s: float | None,
) -> tuple[int, list[list[list[bytes | None]]]]:
    """One pipeline, an HMGET per distinct key of each group; replies per group and row."""
    n, columns = _entity_columns(plan, entities)
    keys: list[bytes] = []
    commands: list[bytes] = []
    layout = []
    for group in plan.groups:
        index: dict[bytes, int] = {}
        inverse = [index.setdefault(k, len(index)) for k in _encode_keys(group, columns)]
        layout.append((len(keys), inverse if len(index) < n else None))
        head, tail = group.hmget_head, group.hmget_fields
        keys += index
        # RESP by hand: redis-py packs ~10x slower per command
        commands += [b"%s$%d\r\n%s\r\n%s" % (head, len(k), k, tail) for k in index]
    replies = connection.exchange_keyed(keys, commands, timeout_s or READ_TIMEOUT_S)
    return n, [
        replies[at : at + n] if inverse is None else [replies[at + u] for u in inverse]
        for at, inverse in layout
    ]


def _entity_columns(
    plan: ReadPlan, entities: Mapping[str, Sequence[Any]]
) -> tuple[int, dict[str, list[Any]]]:
    columns: dict[str, list[Any]] = {}
    for name in plan.entity_columns:
        if name not in entities:
            raise InvalidRequestError(f"entities: missing column {name!r}")
        column = entities[name]
        if not isinstance(column, list):
            column = column.tolist() if hasattr(column, "tolist") else list(column)
        columns[name] = column
    lengths = {len(c) for c in columns.values()}
    if len(lengths) > 1:
        raise InvalidRequestError(f"entities: columns differ in length ({sorted(lengths)})")
    return (lengths.pop() if lengths else 0), columns


def _encode_keys(group: KeyGroup, columns: dict[str, list[Any]]) -> list[bytes]:
    cols = [columns[c] for c in group.columns]
    try:
        return group.encode_keys(cols)
    except (codec.CodecError, struct.error, TypeError, AttributeError, ValueError):
        pass
    for row in range(len(cols[0]) if cols else 0):  # error path: name the bad row
        try:
            group.encode_keys([c[row : row + 1] for c in cols])
        except (codec.CodecError, struct.error, TypeError, AttributeError, ValueError):
            bad = ", ".join(
                f"{c}={columns[c][row]!r} (expected {d})"
                for c, d in zip(group.columns, group.dtypes, strict=True)
            )
            raise InvalidRequestError(f"entities row {row}: {bad}") from None
    raise InvalidRequestError(f"entities {list(group.columns)}: cannot encode the keys")


def _timestamps(plan: ReadPlan, fetched: list[list[list[bytes | None]]]) -> list[int]:
    """Each row's `_ts` per view, in the order of `plan.destinations`; 0 when absent."""
    decode = _timestamp_micros
    try:
        return [
            decode(raw) or 0
            for group, rows in zip(plan.groups, fetched, strict=True)
            for row in rows
            for raw in group.timestamps(row)
        ]
    except codec.CodecError as exc:
        raise DataError(f"a stored _ts of views {list(plan.view_names)}: {exc}") from exc


def _sum(values: list[float] | npt.NDArray[np.float64]) -> float:
    return float(values.sum()) if isinstance(values, np.ndarray) else sum(values)


# One materialize run writes one `_ts` per view, so a read sees few distinct values: memoized.
_timestamp_micros = functools.lru_cache(maxsize=4096)(codec.decode_timestamp_micros)


def _stale(plan: ReadPlan, event_ts: npt.NDArray[np.int64], now_us: int) -> npt.NDArray[np.bool_]:
    stale: npt.NDArray[np.bool_] = event_ts < now_us - plan.ttl_or_never_us
    return stale


def _raise_bad_value(plan: ReadPlan, fetched: list[list[list[bytes | None]]]) -> NoReturn:
    """Error path: name the feature whose stored value is not numeric."""
    for group, rows in zip(plan.groups, fetched, strict=True):
        for feature in group.features:
            if feature.categories is None and feature.dtype in NUMERIC_DTYPES:
                raws = [row[feature.field_at] for row in rows]
                try:
                    codec.decode_numeric(feature.dtype, raws, np.empty(len(raws)))
                except codec.CodecError as exc:
                    raise DataError(f"feature {feature.name}: {exc}") from exc
    raise DataError("undecodable feature values")


def _decode_raw(feature: FeatureRead, raw: bytes | None) -> object:
    try:
        return codec.decode_value(raw)
    except codec.CodecError as exc:
        raise DataError(f"feature {feature.name}: {exc}") from exc
