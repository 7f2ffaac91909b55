"""Where on-demand features go in a model's input matrix; shared by online and batch scoring.

Concern: a model's feature service may hold on-demand views. Each becomes an `OnDemandStep`:
the repo's own function (serving/repo/on_demand.py), the inputs Feast gives it and the columns
of the model input its outputs fill. The server (served_model.py) and the point-in-time batch
scorer (serving/batch/offline_model.py) build their steps here, so both run the same functions
on the same request columns into the same places.

Invariants: positions index the model's input order (its card's feature refs, Feast's full
names `projection__feature`); a view none of whose outputs the model uses has no step. The
inputs of a view are Feast's: the request's entity and request-data columns, and the features
of the views it reads under both their full and their short names (`view_inputs`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.repo.on_demand import OnDemandView, load_on_demand_view
from serving.repo.plan import OnDemandViewPlan, Projection, ServingPlan


@dataclass(frozen=True)
class OnDemandStep:
    view: OnDemandView
    positions: tuple[tuple[str, int], ...]  # output name -> column in the model input

    @property
    def input_features(self) -> tuple[str, ...]:
        return self.view.plan.input_features

    def fill(self, matrix: np.ndarray, inputs: Mapping[str, Any], rows: int) -> None:
        """Compute the view on its input columns and write its outputs into `matrix`."""
        outputs = self.view.compute_floats(inputs, rows)
        for name, position in self.positions:
            matrix[:, position] = outputs[name]


def on_demand_steps(
    plan: ServingPlan, projections: Sequence[Projection], repo: Path, refs: Sequence[str]
) -> tuple[OnDemandStep, ...]:
    """A step per on-demand projection of `projections` that feeds any of `refs`."""
    steps = (
        on_demand_step(p, plan, repo, refs) for p in projections if p.view in plan.on_demand_views
    )
    return tuple(step for step in steps if step.positions)


def on_demand_step(
    projection: Projection, plan: ServingPlan, repo: Path, refs: Sequence[str]
) -> OnDemandStep:
    view = load_view(plan, projection.view, repo)
    index = {ref: i for i, ref in enumerate(refs)}
    positions = tuple(
        (name, index[f"{projection.name}__{name}"])
        for name in projection.features
        if f"{projection.name}__{name}" in index
    )
    return OnDemandStep(view, positions)


def load_view(plan: ServingPlan, name: str, repo: Path) -> OnDemandView:
    """The on-demand view `name`, its function loaded and the dtypes of its inputs known."""
    view = plan.on_demand_views[name]
    return load_on_demand_view(view, repo, input_dtypes(plan, view))


def input_dtypes(plan: ServingPlan, view: OnDemandViewPlan) -> dict[str, str]:
    """Feast dtype of each input column of `view`: request fields, join keys, features."""
    dtypes = {c.name: c.dtype for c in view.request_fields}
    for source in view.sources:
        source_view = plan.feature_view(source.view)
        for key in source_view.join_keys:
            dtypes.setdefault(source.join_key_map.get(key.name, key.name), key.dtype)
        for feature in source.features:
            dtype = source_view.feature(feature).dtype
            dtypes[f"{source.name}__{feature}"] = dtype
            dtypes.setdefault(feature, dtype)
    return dtypes


def view_inputs(
    view: OnDemandViewPlan,
    entities: Mapping[str, Any],
    request_data: Mapping[str, Any],
    features: Mapping[str, Sequence[Any]],
) -> dict[str, Any]:
    """The columns Feast gives `view`: entities, request data, then each feature it reads by
    its full name and its short name (a short name two sources share: the first source's)."""
    inputs = {**entities, **request_data}
    for source in view.sources:
        for feature in source.features:
            full = f"{source.name}__{feature}"
            if full in features:  # read when the body may use it (OnDemandViewPlan.uses)
                inputs[full] = features[full]
                inputs.setdefault(feature, features[full])
    if view.used_inputs is None:
        return inputs
    return {name: inputs[name] for name in view.used_inputs if name in inputs}


def merge_projections(projections: Sequence[Projection]) -> list[Projection]:
    """One projection per name, with the features of all (a service's `view[["a"]]` and an
    on-demand view reading all of `view` are read once)."""
    merged: dict[str, Projection] = {}
    for p in projections:
        known = merged.get(p.name)
        features = (*known.features, *p.features) if known else p.features
        merged[p.name] = Projection(p.view, p.name, p.join_key_map, tuple(dict.fromkeys(features)))
    return list(merged.values())
