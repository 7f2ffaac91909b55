"""A model's features and predictions from the offline store, each row as of its own time.

Concern: the batch twin of `ServedModel` (serving/inference/served_model.py). A model version
resolves once into the same feature plan the server builds (the card's refs in input order,
its feature service's projections and their join-key maps, category codes, on-demand steps,
the server's Scorer); feature-view values come from point-in-time joins over the views'
Parquet sources (point_in_time.py) instead of Redis. A windowed view's values are its windows
as of each row (serving/repo/windows.py), over the raw events of its source, typed as the
online store writes them.

Invariants:
- Column i of the matrix is `card.feature_refs[i]`; NaN is missing, as LightGBM reads it.
- A feature-view value is what the online store would hold and the server would decode:
  Float32 rounded through float32, Int/Bool as float64, a String as the index of its level
  in the card (NaN when unknown or null).
- `missing_per_row` counts the feature-view inputs that are NaN (no row in the ttl window,
  null, unknown level): what the server counts. On-demand outputs are not counted.
- An on-demand view reading feature views gets their values as the server gives them (typed
  Python values, None when missing: `SourceInput`), as of the row's time, whether the model
  uses them or not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from serving.batch.point_in_time import FeatureTable, load_feature_table, load_windows, windows_at
from serving.errors import ModelError
from serving.inference.on_demand_steps import (
    OnDemandStep,
    merge_projections,
    on_demand_steps,
    view_inputs,
)
from serving.inference.served_model import Prediction
from serving.models.card import NUMERIC_DTYPES, ModelCard, category_codes
from serving.models.registry import LoadedModel
from serving.models.scorer import Scorer
from serving.repo.plan import DUMMY_ENTITY_ID, Column, ColumnValues, Projection, ServingPlan
from serving.repo.windows import WindowIndex


@dataclass(frozen=True, eq=False)
class ProjectionJoin:
    """One feature-view projection: where its keys come from and where its values go."""

    projection: str
    table: FeatureTable
    key_columns: tuple[str, ...]  # the entity column feeding each of the view's join keys
    values: npt.NDArray[np.float64]  # (table rows + 1, features); the last row is all NaN
    positions: npt.NDArray[np.intp]  # the model input column of each feature

    def fill(self, matrix: np.ndarray, entities: ColumnValues, at_ns: np.ndarray) -> None:
        rows = self.table.match(_keys(entities, self.key_columns, len(at_ns)), at_ns)
        matrix[:, self.positions] = self.values[rows]  # row -1: the NaN row


@dataclass(frozen=True, eq=False)
class WindowJoin:
    """One windowed view projection: its windows as of each entity row, computed per call."""

    projection: str
    index: WindowIndex
    key_columns: tuple[str, ...]  # the entity column feeding each of the view's join keys
    features: tuple[str, ...]  # the view's names
    dtypes: tuple[str, ...]
    refs: tuple[str, ...]
    card: ModelCard
    positions: npt.NDArray[np.intp]

    def fill(self, matrix: np.ndarray, entities: ColumnValues, at_ns: np.ndarray) -> None:
        keys = _keys(entities, self.key_columns, len(at_ns))
        table = windows_at(self.index, keys, at_ns, self.features)
        for position, ref, name, dtype in zip(
            self.positions, self.refs, self.features, self.dtypes, strict=True
        ):
            matrix[:, position] = _model_values(ref, table[name], dtype, self.card)


@dataclass(frozen=True, eq=False)
class SourceInput:
    """A feature-view projection an on-demand view reads: its features as the server gives
    them to the view's function (typed Python values, None when missing), as of each row."""

    projection: Projection
    key_columns: tuple[str, ...]
    features: tuple[str, ...]  # the view's names the on-demand views use
    table: FeatureTable | None  # a plain view's rows
    index: WindowIndex | None  # a windowed view's events

    def values(self, entities: ColumnValues, at_ns: np.ndarray) -> dict[str, list[object]]:
        keys = _keys(entities, self.key_columns, len(at_ns))
        if self.index is not None:
            found = windows_at(self.index, keys, at_ns, self.features)
        else:
            assert self.table is not None
            rows = self.table.match(keys, at_ns)
            taken = pa.array(rows, mask=rows < 0)  # a null index takes a null
            found = self.table.columns.select(list(self.features)).take(taken)
        return {f"{self.projection.name}__{f}": found[f].to_pylist() for f in self.features}


@dataclass(frozen=True, eq=False)
class OfflineModel:
    name: str
    version: str
    card: ModelCard
    joins: tuple[ProjectionJoin | WindowJoin, ...]
    on_demand: tuple[OnDemandStep, ...]
    sources: tuple[SourceInput, ...]  # what the on-demand steps read of feature views
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
        features: dict[str, list[object]] = {}
        for source in self.sources:
            features.update(source.values(entities, at_ns))
        for step in self.on_demand:
            step.fill(matrix, view_inputs(step.view.plan, entities, request_data, features), rows)
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
    steps = on_demand_steps(plan, service.projections, repo, refs)
    used = {f for step in steps for f in step.input_features}
    sources = [
        replace(source, features=tuple(f for f in source.features if f"{source.name}__{f}" in used))
        for source in merge_projections([s for step in steps for s in step.view.plan.sources])
    ]
    sources = [source for source in sources if source.features]
    needed: dict[str, list[str]] = {}
    for p, features in [*((p, chosen[p.name]) for p in views), *((s, s.features) for s in sources)]:
        # projections of one view (pickup_zone, dropoff_zone) share its table
        needed[p.view] = list(dict.fromkeys([*needed.get(p.view, []), *features]))
    windowed = {view for view in needed if plan.feature_view(view).windowed}
    tables = {
        view: load_feature_table(plan.feature_view(view), repo, features)
        for view, features in needed.items()
        if view not in windowed
    }
    indexes = {view: load_windows(plan.feature_view(view), repo) for view in windowed}
    joins = tuple(
        _window_join(p, chosen[p.name], indexes[p.view], plan, card)
        if p.view in indexes
        else _join(p, chosen[p.name], tables[p.view], plan, card)
        for p in views
    )
    inputs = tuple(
        SourceInput(
            projection=s,
            key_columns=tuple(
                s.join_key_map.get(k.name, k.name) for k in plan.feature_view(s.view).join_keys
            ),
            features=s.features,
            table=tables.get(s.view),
            index=indexes.get(s.view),
        )
        for s in sources
    )
    return OfflineModel(
        name=loaded.name,
        version=str(loaded.version),
        card=card,
        joins=joins,
        on_demand=steps,
        sources=inputs,
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


def _window_join(
    projection: Projection,
    features: Sequence[str],
    index: WindowIndex,
    plan: ServingPlan,
    card: ModelCard,
) -> WindowJoin:
    view = plan.feature_view(projection.view)
    positions = {ref: i for i, ref in enumerate(card.feature_refs)}
    refs = tuple(f"{projection.name}__{f}" for f in features)
    return WindowJoin(
        projection=projection.name,
        index=index,
        key_columns=tuple(projection.join_key_map.get(k.name, k.name) for k in view.join_keys),
        features=tuple(features),
        dtypes=tuple(view.feature(f).dtype for f in features),
        refs=refs,
        card=card,
        positions=np.array([positions[ref] for ref in refs], dtype=np.intp),
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


def _keys(entities: ColumnValues, columns: Sequence[str], rows: int) -> list[Any]:
    """The entity columns feeding a view's join keys; an entityless view's dummy key is ""."""
    return [
        [""] * rows if c == DUMMY_ENTITY_ID and c not in entities else entities[c] for c in columns
    ]
