"""A model's features and predictions from the offline store, each row as of its own time.

Concern: the batch twin of `ServedModel` (serving/inference/served_model.py). A model version
resolves once into the same feature plan the server builds (the card's refs in input order,
its feature service's projections and their join-key maps, category codes, on-demand steps,
the server's Scorer); feature-view values come from point-in-time joins over the views'
Parquet sources (point_in_time.py) instead of Redis.

Invariants:
- Column i of the matrix is `card.feature_refs[i]`; NaN is missing, as LightGBM reads it.
- A feature-view value is what the online store would hold and the server would decode:
  Float32 rounded through float32, Int/Bool as float64, a String as the index of its level
  in the card (NaN when unknown or null).
- `missing_per_row` counts the feature-view inputs that are NaN (no row in the ttl window,
  null, unknown level): what the server counts. On-demand outputs are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from serving.batch.point_in_time import FeatureTable, load_feature_table
from serving.errors import ModelError, PlanError
from serving.inference.on_demand_steps import OnDemandStep, on_demand_steps, view_inputs
from serving.inference.served_model import Prediction
from serving.models.card import NUMERIC_DTYPES, ModelCard, category_codes
from serving.models.registry import LoadedModel
from serving.models.scorer import Scorer
from serving.repo.plan import Column, ColumnValues, Projection, ServingPlan


@dataclass(frozen=True, eq=False)
class ProjectionJoin:
    """One feature-view projection: where its keys come from and where its values go."""

    projection: str
    table: FeatureTable
    key_columns: tuple[str, ...]  # the entity column feeding each of the view's join keys
    values: npt.NDArray[np.float64]  # (table rows + 1, features); the last row is all NaN
    positions: npt.NDArray[np.intp]  # the model input column of each feature

    def fill(self, matrix: np.ndarray, entities: ColumnValues, at_ns: np.ndarray) -> None:
        rows = self.table.match([entities[c] for c in self.key_columns], at_ns)
        matrix[:, self.positions] = self.values[rows]  # row -1: the NaN row


@dataclass(frozen=True, eq=False)
class OfflineModel:
    name: str
    version: str
    card: ModelCard
    joins: tuple[ProjectionJoin, ...]
    on_demand: tuple[OnDemandStep, ...]
    scorer: Scorer
    view_columns: npt.NDArray[np.intp]  # model input columns filled by feature views

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.card.feature_refs

    @property
    def entities(self) -> tuple[Column, ...]:
        return self.card.entities

    @property
    def request_fields(self) -> tuple[Column, ...]:
        return self.card.request_fields

    def features(
        self, entities: ColumnValues, request_data: ColumnValues, at_ns: np.ndarray, rows: int
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int32]]:
        """The (rows, features) input matrix as of `at_ns` (int64 ns, UTC) and missing counts."""
        matrix = np.full((rows, len(self.card.feature_refs)), math.nan)
        for join in self.joins:
            join.fill(matrix, entities, at_ns)
        for step in self.on_demand:
            step.fill(matrix, view_inputs(step.view.plan, entities, request_data, {}), rows)
        missing = np.isnan(matrix[:, self.view_columns]).sum(axis=1, dtype=np.int32)
        return matrix, missing

    def predict(
        self, entities: ColumnValues, request_data: ColumnValues, at_ns: np.ndarray, rows: int
    ) -> Prediction:
        matrix, missing = self.features(entities, request_data, at_ns, rows)
        return Prediction(self.scorer.score(matrix), missing, matrix)


def build_offline_model(
    loaded: LoadedModel, plan: ServingPlan, repo: Path, num_threads: int = 1
) -> OfflineModel:
    """Resolve `loaded` against the repo and load the feature tables its projections read."""
    card = loaded.card
    refs = card.feature_refs
    service = plan.feature_service(card.feature_service)
    chosen = {
        p.name: [f for f in p.features if f"{p.name}__{f}" in refs]
        for p in service.projections
        if p.view in plan.feature_views
    }
    views = [p for p in service.projections if chosen.get(p.name)]
    needed: dict[str, list[str]] = {}
    for p in views:  # projections of one view (pickup_zone, dropoff_zone) share its table
        needed[p.view] = list(dict.fromkeys([*needed.get(p.view, []), *chosen[p.name]]))
    tables = {
        view: load_feature_table(plan.feature_view(view), repo, features)
        for view, features in needed.items()
    }
    joins = tuple(_join(p, chosen[p.name], tables[p.view], plan, card) for p in views)
    return OfflineModel(
        name=loaded.name,
        version=str(loaded.version),
        card=card,
        joins=joins,
        on_demand=_request_only(on_demand_steps(plan, service.projections, repo, refs)),
        scorer=Scorer(
            loaded.booster,
            num_threads,
            f"{loaded.name}:{loaded.version}",
            record=card.scorer,  # verified at registration: not again while it matches
            model_sha256=card.model_sha256,
        ),
        view_columns=np.concatenate([np.zeros(0, np.intp), *(j.positions for j in joins)]),
    )


def _join(
    projection: Projection,
    features: Sequence[str],
    table: FeatureTable,
    plan: ServingPlan,
    card: ModelCard,
) -> ProjectionJoin:
    view = plan.feature_view(projection.view)
    index = {ref: i for i, ref in enumerate(card.feature_refs)}
    refs = [f"{projection.name}__{f}" for f in features]
    columns = [
        _model_values(ref, table.columns[f], view.feature(f).dtype, card)
        for ref, f in zip(refs, features, strict=True)
    ]
    values = np.full((table.rows + 1, len(features)), math.nan)
    if columns:
        values[:-1] = np.column_stack(columns)
    return ProjectionJoin(
        projection=projection.name,
        table=table,
        key_columns=tuple(projection.join_key_map.get(k, k) for k in table.join_keys),
        values=values,
        positions=np.array([index[ref] for ref in refs], dtype=np.intp),
    )


def _model_values(ref: str, column: Any, dtype: str, card: ModelCard) -> np.ndarray:
    """A feature's source values as the server puts them in the model input."""
    if ref in card.categorical_levels:
        return category_codes(column.to_pylist(), card.categorical_levels[ref])
    if dtype not in NUMERIC_DTYPES:
        raise ModelError(f"feature {ref!r} has type {dtype}, which LightGBM cannot take")
    if dtype == "Float32":  # the online store keeps a float32
        column = pc.cast(column, pa.float32(), safe=False)
    values: np.ndarray = pc.cast(column, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    return values


def _request_only(steps: tuple[OnDemandStep, ...]) -> tuple[OnDemandStep, ...]:
    """Batch scoring computes on-demand views from request data; one that reads feature views
    is refused by name (`score --online` reads them from the online store)."""
    for step in steps:
        if step.input_features:
            raise PlanError(
                f"on-demand view {step.view.plan.name!r} reads feature views: batch scoring "
                "computes on-demand views from request data only; use `carrara score --online`"
            )
    return steps
