"""Read plans: a feature service's projections resolved, once, into what a Redis read needs.

Concern: everything about an online read that does not depend on the request, computed at
start-up so the request path only encodes key values, sends one pipeline and decodes.

A *key group* is the set of views read through the same request columns (e.g. every view
keyed by `driver_id`; `zone_stats` projected as `pickup_zone` and as `dropoff_zone` gives two
groups, one per request column). Each distinct key of a group costs one HMGET of all its
fields: the features' murmur3 names, then each view's `_ts:<view>`.

Invariants:
- Feature names are Feast's full feature names, "{projection}__{feature}".
- Join keys are kept in Feast's key order (sorted by name) with their declared dtypes, and
  the request column feeding each (a projection's join_key_map applied).
- On-demand views are not read (the server computes them); names of `feature_order` that no
  feature-view projection provides keep their column, untouched by reads.
- Numeric features (Int32/Int64/Float32/Float64/Bool/UnixTimestamp) and String features
  with `categories` (raw Value bytes -> model code) fill the float matrix; any other feature
  is only available through raw reads.
"""

from __future__ import annotations

import functools
import operator
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.errors import PlanError
from serving.repo.plan import DUMMY_ENTITY_ID, FeatureViewPlan, Projection, ServingPlan
from serving.store import codec

NUMERIC_DTYPES = frozenset({"Int32", "Int64", "Float32", "Float64", "Bool", "UnixTimestamp"})
_US = 1_000_000
NEVER_US = 2**62  # a ttl no event time can exceed: now - NEVER_US is before any timestamp
_CACHED_LAYOUTS = 256  # batch sizes whose gather layout is kept

Getter = Callable[[Sequence[Any]], tuple[Any, ...]]
KeyEncoder = Callable[[Sequence[Sequence[Any]]], list[bytes]]  # key columns -> Redis keys


@dataclass(frozen=True)
class FeatureRead:
    name: str  # "{projection}__{feature}"
    field_at: int  # position in the group's HMGET fields
    column: int  # output column in the values matrix
    slot: int  # the view's column in the event-time matrix
    dtype: str
    categories: Mapping[bytes, float] | None  # String -> model code


@dataclass(frozen=True)
class KeyGroup:
    join_keys: tuple[str, ...]  # Feast order (sorted by name)
    dtypes: tuple[str, ...]
    columns: tuple[str, ...]  # the request column feeding each join key
    encode_keys: KeyEncoder  # the join-key columns (in `columns` order) -> Redis keys
    fields: tuple[bytes, ...]  # HMGET fields: features, then each view's `_ts`
    hmget_head: bytes  # RESP of an HMGET of `fields` up to the key ...
    hmget_fields: bytes  # ... and after it
    features: tuple[FeatureRead, ...]
    numeric: Getter  # a reply row -> its numeric features' raw values
    numeric_columns: npt.NDArray[np.intp]
    categorical: tuple[FeatureRead, ...]
    timestamps: Getter  # a reply row -> each view's raw `_ts`
    slots: npt.NDArray[np.intp]  # each view's column in the event-time matrix


@dataclass(frozen=True, eq=False)
class ReadPlan:
    project: str
    feature_names: tuple[str, ...]  # columns of the values matrix (e.g. a model's inputs)
    view_names: tuple[str, ...]  # columns of the event-time matrix (projection names)
    entity_columns: tuple[str, ...]  # request columns a caller must send
    groups: tuple[KeyGroup, ...]
    read_columns: npt.NDArray[np.intp]  # the columns this plan fills
    slot_of_column: npt.NDArray[np.intp]  # per read column: its view's slot
    ttl_us: npt.NDArray[np.int64]  # per view slot; 0: never stale
    _layouts: dict[int, tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]] = field(
        default_factory=dict, repr=False
    )
    _all_present: dict[int, tuple[npt.NDArray[np.uint8], npt.NDArray[np.int32]]] = field(
        default_factory=dict, repr=False
    )

    def destinations(self, rows: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """Flat indices into the (rows, features) values and (rows, views) event-time
        matrices, in the order a read gathers them: group by group, row by row, then the
        group's numeric features (resp. views) in order. Cached for small batches."""
        cached = self._layouts.get(rows)
        if cached is not None:
            return cached
        row = np.arange(rows, dtype=np.intp)[:, None]
        width, views = len(self.feature_names), len(self.view_names)
        none = np.zeros(0, np.intp)
        values_at = [(row * width + g.numeric_columns).reshape(-1) for g in self.groups]
        ts_at = [(row * views + g.slots).reshape(-1) for g in self.groups]
        result = (np.concatenate([none, *values_at]), np.concatenate([none, *ts_at]))
        if rows <= _CACHED_LAYOUTS:
            self._layouts[rows] = result
        return result

    @functools.cached_property
    def ttl_or_never_us(self) -> npt.NDArray[np.int64]:
        """`ttl_us` with 0 as NEVER_US: a view's value is stale iff its ts < now - this."""
        never: npt.NDArray[np.int64] = np.where(self.ttl_us > 0, self.ttl_us, NEVER_US)
        return never

    def all_present(self, rows: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int32]]:
        """The (rows, features) status of a read that found every feature fresh (PRESENT in
        the read columns, MISSING elsewhere) and its zero missing count per row; read-only,
        shared between reads, cached for small batches."""
        cached = self._all_present.get(rows)
        if cached is not None:
            return cached
        status = np.zeros((rows, len(self.feature_names)), np.uint8)
        status[:, self.read_columns] = 1  # reads.PRESENT
        missing = np.zeros(rows, np.int32)
        status.flags.writeable = missing.flags.writeable = False
        if rows <= _CACHED_LAYOUTS:
            self._all_present[rows] = (status, missing)
        return status, missing


def with_dummy_key(plan: ReadPlan, entities: Mapping[str, Any], rows: int) -> Mapping[str, Any]:
    """`entities` with Feast's constant join key of entityless views, when the plan reads one
    (a caller never sends it)."""
    if DUMMY_ENTITY_ID not in plan.entity_columns:
        return entities
    return {**entities, DUMMY_ENTITY_ID: [""] * rows}


def build_read_plan(
    serving_plan: ServingPlan,
    projections: Sequence[Projection],
    feature_order: Sequence[str] | None = None,
    categories: Mapping[str, Mapping[bytes, float]] | None = None,
) -> ReadPlan:
    """A ReadPlan for `projections` of `serving_plan` (e.g. a feature service's).

    `feature_order` names the output columns; by default every feature of every feature-view
    projection, in order. Features of the projections that it does not name are not read.
    """
    categories = categories or {}
    views = [p for p in projections if p.view not in serving_plan.on_demand_views]
    offered = [f"{p.name}__{f}" for p in views for f in p.features]
    order = tuple(feature_order) if feature_order is not None else tuple(offered)
    column_of = {name: i for i, name in enumerate(order)}
    if len(column_of) != len(order):
        raise PlanError(f"duplicate feature names in {list(order)}")
    unknown = sorted(set(categories) - set(offered))
    if unknown:
        raise PlanError(f"categories given for features the service does not have: {unknown}")
    builders: dict[tuple[tuple[str, str, str], ...], _GroupBuilder] = {}
    view_names: list[str] = []
    ttl_us: list[int] = []
    for projection in views:
        view = serving_plan.feature_view(projection.view)
        chosen = [f for f in projection.features if f"{projection.name}__{f}" in column_of]
        if chosen:
            key = _group_key(view, projection)
            builder = builders.setdefault(
                key,
                _GroupBuilder(
                    key, serving_plan.project, serving_plan.entity_key_serialization_version
                ),
            )
            builder.add_view(view.name, len(view_names))
            view_names.append(projection.name)
            ttl_us.append((view.ttl_s or 0) * _US)  # None (ttl=None) and 0: no ttl
            _add_features(builder, view, projection.name, chosen, column_of, categories)
    groups = tuple(b.build() for b in builders.values())
    read = [f for g in groups for f in g.features]
    return ReadPlan(
        project=serving_plan.project,
        feature_names=order,
        view_names=tuple(view_names),
        entity_columns=tuple(dict.fromkeys(c for g in groups for c in g.columns)),
        groups=groups,
        read_columns=np.array([f.column for f in read], np.intp),
        slot_of_column=np.array([f.slot for f in read], np.intp),
        ttl_us=np.array(ttl_us, np.int64),
    )


def _group_key(view: FeatureViewPlan, projection: Projection) -> tuple[tuple[str, str, str], ...]:
    """(join key, dtype, request column) per join key, in Feast's (sorted) key order."""
    columns = projection.join_key_map
    return tuple(sorted((k.name, k.dtype, columns.get(k.name, k.name)) for k in view.join_keys))


def _add_features(
    builder: _GroupBuilder,
    view: FeatureViewPlan,
    projection: str,
    features: Sequence[str],
    column_of: Mapping[str, int],
    categories: Mapping[str, Mapping[bytes, float]],
) -> None:
    for feature in features:
        name = f"{projection}__{feature}"
        dtype = view.feature(feature).dtype
        if name in categories and dtype != "String":
            raise PlanError(f"categories given for {name}, a {dtype} feature")
        field = codec.field_name(view.name, feature)
        builder.add_feature(name, field, column_of[name], dtype, categories.get(name))


class _GroupBuilder:
    """Collects the views and features read through one set of key columns."""

    def __init__(
        self, key: tuple[tuple[str, str, str], ...], project: str, key_version: int = 3
    ) -> None:
        self.key = key
        self.project = project
        self.key_version = key_version
        self.fields: list[bytes] = []
        self.features: list[FeatureRead] = []
        self.views: list[tuple[str, int]] = []

    def add_view(self, view: str, slot: int) -> None:
        self.views.append((view, slot))

    def add_feature(
        self,
        name: str,
        field: bytes,
        column: int,
        dtype: str,
        categories: Mapping[bytes, float] | None,
    ) -> None:
        if field not in self.fields:  # the same view read twice shares its fields
            self.fields.append(field)
        cats = dict(categories) if categories is not None else None
        at, slot = self.fields.index(field), self.views[-1][1]
        self.features.append(FeatureRead(name, at, column, slot, dtype, cats))

    def build(self) -> KeyGroup:
        fields = list(self.fields)
        for view, _ in self.views:
            if codec.ts_field(view) not in fields:
                fields.append(codec.ts_field(view))
        numeric = [f for f in self.features if f.categories is None and f.dtype in NUMERIC_DTYPES]
        join_keys = tuple(k for k, _, _ in self.key)
        dtypes = tuple(d for _, d, _ in self.key)
        return KeyGroup(
            join_keys=join_keys,
            dtypes=dtypes,
            columns=tuple(c for _, _, c in self.key),
            encode_keys=key_encoder(join_keys, dtypes, self.project, self.key_version),
            fields=tuple(fields),
            hmget_head=b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(fields)),
            hmget_fields=b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in fields),
            features=tuple(self.features),
            numeric=getter([f.field_at for f in numeric]),
            numeric_columns=np.array([f.column for f in numeric], np.intp),
            categorical=tuple(f for f in self.features if f.categories is not None),
            timestamps=getter([fields.index(codec.ts_field(view)) for view, _ in self.views]),
            slots=np.array([slot for _, slot in self.views], np.intp),
        )


def getter(positions: Sequence[int]) -> Getter:
    """A C-speed `row -> tuple(row[p] for p in positions)`, whatever the count."""
    if len(positions) == 0:
        return lambda _row: ()
    if len(positions) == 1:
        (at,) = positions
        return lambda row: (row[at],)
    get: Getter = operator.itemgetter(*positions)
    return get


_FIXED = {"Int64": (4, struct.Struct("<q").pack), "Int32": (3, struct.Struct("<i").pack)}


def key_encoder(
    join_keys: Sequence[str], dtypes: Sequence[str], project: str, version: int = 3
) -> KeyEncoder:
    """Redis keys of entity rows, byte-identical to `encoding.encode_entity_keys`.

    Join keys must be in Feast's (sorted) order. Per row this is a few concatenations of
    precomputed bytes; a value of the wrong type raises TypeError, AttributeError or
    struct.error (the caller names the row). Dtypes other than Int64/Int32/String/Bytes, and
    Int64 keys of entity_key_serialization_version 1 (4 bytes), go through the codec.
    """
    prefix, suffix = codec.entity_key_prefix(join_keys, version), project.encode("utf-8")
    exotic = any(d not in _FIXED and d not in ("String", "Bytes") for d in dtypes)
    if exotic or (version < 2 and "Int64" in dtypes):
        one = codec.encode_entity_key  # row by row
        return lambda columns: [
            one(join_keys, dtypes, r, project, version) for r in zip(*columns, strict=True)
        ]
    if len(dtypes) == 1 and dtypes[0] in _FIXED:  # the common case, made short
        tag, pack = _FIXED[dtypes[0]]
        head = prefix + struct.pack("<II", tag, len(pack(0)))
        return lambda columns: [head + pack(v) + suffix for v in columns[0]]
    if all(d in _FIXED for d in dtypes):  # e.g. route_stats' two zone ids: one pack per row
        return _fixed_width_encoder(prefix, suffix, dtypes)
    packers = [_value_packer(d) for d in dtypes]

    def encode(columns: Sequence[Sequence[Any]]) -> list[bytes]:
        return [
            b"".join([prefix, *(p(v) for p, v in zip(packers, row, strict=True)), suffix])
            for row in zip(*columns, strict=True)
        ]

    return encode


def _fixed_width_encoder(prefix: bytes, suffix: bytes, dtypes: Sequence[str]) -> KeyEncoder:
    """Keys of integer join keys only: each value's header is a constant, so a row is one
    struct pack of (header, value, header, value, ...)."""
    formats = {"Int64": "q", "Int32": "i"}
    pack = struct.Struct("<" + "".join(f"8s{formats[d]}" for d in dtypes)).pack
    headers = [struct.pack("<II", _FIXED[d][0], len(_FIXED[d][1](0))) for d in dtypes]

    def encode(columns: Sequence[Sequence[Any]]) -> list[bytes]:
        if len({len(c) for c in columns}) > 1:
            raise ValueError("key columns differ in length")
        # headers repeat endlessly beside each column: zip ends with the (equal) columns
        interleaved = [x for h, c in zip(headers, columns, strict=True) for x in (repeat(h), c)]
        return [prefix + pack(*row) + suffix for row in zip(*interleaved, strict=False)]

    return encode


def _value_packer(dtype: str) -> Callable[[Any], bytes]:
    header = struct.Struct("<II").pack
    if dtype in _FIXED:
        tag, pack = _FIXED[dtype]
        head = header(tag, len(pack(0)))
        return lambda v: head + pack(v)
    if dtype == "String":
        return lambda v: header(2, len(b := v.encode("utf-8"))) + b
    return lambda v: header(1, len(v)) + bytes(memoryview(v))
