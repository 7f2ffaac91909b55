"""GetOnlineFeatures: a feature service's (or explicit refs') values, typed, per row.

Lookups are resolved once per (service, refs) and cached by the predictor: the read plan, the
entity columns and request fields a caller sends, each feature's dtype, and the on-demand
views to run. One round trip reads the requested features and those the on-demand views read;
the views then run on them as Feast runs them (serving/repo/on_demand.py). Values come back
as Python values of any Feast type (None where not PRESENT) with their event timestamps and a
status (present / missing / stale); an on-demand output has event time 0 and is PRESENT
unless null.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import NotFoundError, PlanError, echo
from serving.inference.on_demand_steps import load_view, merge_projections, view_inputs
from serving.repo.on_demand import OnDemandView
from serving.repo.plan import DUMMY_ENTITY_ID, Column, ColumnValues, Projection, ServingPlan
from serving.store.online_store import OnlineStore
from serving.store.read_plan import ReadPlan, build_read_plan, with_dummy_key
from serving.store.reads import PRESENT

_ABSENT = np.uint8(0)  # reads.MISSING


@dataclass(frozen=True)
class FeatureValues:
    name: str
    dtype: str
    values: list[Any]  # None where not PRESENT
    event_timestamps_us: np.ndarray
    statuses: np.ndarray


@dataclass(frozen=True)
class OnDemandOutputs:
    projection: Projection
    view: OnDemandView


@dataclass(frozen=True)
class FeatureLookup:
    entities: tuple[Column, ...]
    request_fields: tuple[Column, ...]
    width: int  # the requested stored features: the read plan's first columns
    dtypes: tuple[str, ...]
    read_plan: ReadPlan
    on_demand: tuple[OnDemandOutputs, ...]
    store: OnlineStore

    def read(
        self, entities: ColumnValues, request_data: ColumnValues, rows: int, timeout_s: float
    ) -> list[FeatureValues]:
        keys = with_dummy_key(self.read_plan, entities, rows)
        raw = self.store.read_raw(self.read_plan, keys, timeout_s=timeout_s)
        names = self.read_plan.feature_names
        columns = [
            FeatureValues(
                names[i],
                self.dtypes[i],
                raw.values[i],
                raw.event_ts_us[:, self.read_plan.slot_of_column[i]],
                raw.status[:, i],
            )
            for i in range(self.width)
        ]
        features = dict(zip(names, raw.values, strict=True))
        for step in self.on_demand:
            inputs = view_inputs(step.view.plan, entities, request_data, features)
            columns += _outputs(step, step.view.compute(inputs, rows), rows)
        return columns


def _outputs(step: OnDemandOutputs, outputs: dict[str, Any], rows: int) -> list[FeatureValues]:
    dtypes = {c.name: c.dtype for c in step.view.plan.outputs}
    columns = []
    for name in step.projection.features:
        values = [_null_if_nan(v) for v in _python(outputs[name])]
        statuses = np.array([_ABSENT if v is None else PRESENT for v in values], np.uint8)
        columns.append(
            FeatureValues(
                f"{step.projection.name}__{name}",
                dtypes[name],
                values,
                np.zeros(rows, np.int64),
                statuses,
            )
        )
    return columns


def _python(column: Any) -> list[Any]:
    return column.tolist() if isinstance(column, np.ndarray) else list(column)


def _null_if_nan(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def build_lookup(
    plan: ServingPlan,
    store: OnlineStore,
    service: str | None,
    refs: Sequence[str],
    repo: Path,
) -> FeatureLookup:
    """A lookup for a feature service's views, or for "view:feature" refs."""
    projections = (
        plan.feature_service(service).projections if service else _ref_projections(plan, refs)
    )
    stored = [p for p in projections if p.view in plan.feature_views]
    on_demand = tuple(
        OnDemandOutputs(p, load_view(plan, p.view, repo))
        for p in projections
        if p.view in plan.on_demand_views
    )
    names = [f"{p.name}__{f}" for p in stored for f in p.features]
    sources = [source for step in on_demand for source in step.view.plan.sources]
    inputs = [f for step in on_demand for f in step.view.plan.input_features if f not in names]
    read_plan = build_read_plan(
        plan, merge_projections([*stored, *sources]), [*names, *dict.fromkeys(inputs)]
    )
    dtypes = tuple(plan.feature_view(p.view).feature(f).dtype for p in stored for f in p.features)
    entities = tuple(
        dict.fromkeys(
            Column(column, dtype)
            for group in read_plan.groups
            for column, dtype in zip(group.columns, group.dtypes, strict=True)
            if column in read_plan.entity_columns and column != DUMMY_ENTITY_ID
        )
    )
    request_fields = tuple(
        dict.fromkeys(c for step in on_demand for c in step.view.plan.request_fields)
    )
    return FeatureLookup(entities, request_fields, len(names), dtypes, read_plan, on_demand, store)


def _ref_projections(plan: ServingPlan, refs: Sequence[str]) -> list[Projection]:
    features: dict[str, list[str]] = {}
    for ref in refs:
        view, sep, feature = ref.partition(":")
        if not sep or (view not in plan.feature_views and view not in plan.on_demand_views):
            raise NotFoundError(
                f"feature ref {echo(ref)}: no feature view {echo(view)} (use view:feature)"
            )
        if feature not in _feature_names(plan, view):
            raise NotFoundError(
                f"feature ref {echo(ref)}: view {view!r} has no feature {echo(feature)}"
            )
        features.setdefault(view, []).append(feature)
    return [Projection(view, view, {}, tuple(dict.fromkeys(fs))) for view, fs in features.items()]


def _feature_names(plan: ServingPlan, view: str) -> list[str]:
    if view in plan.on_demand_views:
        return [c.name for c in plan.on_demand_views[view].outputs]
    try:
        return [c.name for c in plan.feature_view(view).features]
    except PlanError:
        return []
