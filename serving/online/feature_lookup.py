"""GetOnlineFeatures: a feature service's (or explicit refs') stored values, typed, per row.

Lookups are resolved once per (service, refs) and cached by the predictor: the read plan, the
entity columns a caller sends, and each feature's dtype. Values come back with their event
timestamps and a status (present / missing / stale); a value that is not present is filled
with its type's default (NaN for floats, 0, "" or false otherwise), as the wire has no nulls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from serving.errors import InvalidRequestError, NotFoundError, PlanError, echo
from serving.repo.plan import Column, ColumnValues, Projection, ServingPlan
from serving.store.online_store import OnlineStore
from serving.store.read_plan import ReadPlan, build_read_plan

SCALAR_DTYPES = frozenset(
    {"Int32", "Int64", "UnixTimestamp", "Float32", "Float64", "String", "Bool"}
)
_FILL: dict[str, tuple[object, type]] = {
    "Int32": (0, np.int64),
    "Int64": (0, np.int64),
    "UnixTimestamp": (0, np.int64),
    "Float32": (np.nan, np.float64),
    "Float64": (np.nan, np.float64),
    "String": ("", object),
    "Bool": (False, np.bool_),
}


@dataclass(frozen=True)
class FeatureValues:
    name: str
    dtype: str
    values: np.ndarray  # a default value where not PRESENT
    event_timestamps_us: np.ndarray
    statuses: np.ndarray


@dataclass(frozen=True)
class FeatureLookup:
    entities: tuple[Column, ...]
    dtypes: tuple[str, ...]
    read_plan: ReadPlan
    store: OnlineStore

    def read(self, entities: ColumnValues, rows: int, timeout_s: float) -> list[FeatureValues]:
        raw = self.store.read_raw(self.read_plan, entities, timeout_s=timeout_s)
        columns = []
        for i, (name, dtype) in enumerate(
            zip(self.read_plan.feature_names, self.dtypes, strict=True)
        ):
            fill, numpy_type = _FILL[dtype]
            filled = [fill if v is None else v for v in raw.values[i]]
            values: np.ndarray = np.array(filled, dtype=numpy_type)
            slot = self.read_plan.slot_of_column[i]
            columns.append(
                FeatureValues(name, dtype, values, raw.event_ts_us[:, slot], raw.status[:, i])
            )
        return columns


def build_lookup(
    plan: ServingPlan, store: OnlineStore, service: str | None, refs: Sequence[str]
) -> FeatureLookup:
    """A lookup for a feature service's feature views, or for "view:feature" refs."""
    projections = (
        [p for p in plan.feature_service(service).projections if p.view in plan.feature_views]
        if service
        else _ref_projections(plan, refs)
    )
    names = [f"{p.name}__{f}" for p in projections for f in p.features]
    dtypes = tuple(
        plan.feature_view(p.view).feature(f).dtype for p in projections for f in p.features
    )
    for name, dtype in zip(names, dtypes, strict=True):
        if dtype not in SCALAR_DTYPES:
            raise InvalidRequestError(f"feature {name} is a {dtype}; only scalars are served here")
    read_plan = build_read_plan(plan, projections, feature_order=names)
    entities = tuple(
        dict.fromkeys(
            Column(column, dtype)
            for group in read_plan.groups
            for column, dtype in zip(group.columns, group.dtypes, strict=True)
        )
    )
    return FeatureLookup(entities, dtypes, read_plan, store)


def _ref_projections(plan: ServingPlan, refs: Sequence[str]) -> list[Projection]:
    features: dict[str, list[str]] = {}
    for ref in refs:
        view, sep, feature = ref.partition(":")
        if not sep or view not in plan.feature_views:
            raise NotFoundError(
                f"feature ref {echo(ref)}: no feature view {echo(view)} (use view:feature)"
            )
        try:
            plan.feature_view(view).feature(feature)
        except PlanError:
            raise NotFoundError(
                f"feature ref {echo(ref)}: view {view!r} has no feature {echo(feature)}"
            ) from None
        features.setdefault(view, []).append(feature)
    return [Projection(view, view, {}, tuple(dict.fromkeys(fs))) for view, fs in features.items()]
