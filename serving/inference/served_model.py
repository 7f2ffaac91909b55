"""A model version resolved for scoring: read its features, add on-demand ones, score.

Shared by the online service and batch scoring (`score --online`), so both run the same
steps. Built once per version (`build_served_model`): the Redis read plan for its feature
views (key encoders, hashed fields, ttl, positions in the model's input vector, category codes
for string features), its on-demand steps and where their outputs go, the inputs a caller must
send, and the scorer. A `predict` then costs one pipelined Redis round trip, the on-demand
functions on numpy columns, and the scorer. What it observes (read latency, missing and stale
values) goes to a `ReadObserver`: the server's metrics, or nothing in a batch job.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from serving.errors import StoreUnavailableError
from serving.inference.on_demand_steps import (
    OnDemandStep,
    merge_projections,
    on_demand_steps,
    view_inputs,
)
from serving.models.registry import LoadedModel
from serving.models.scorer import Scorer
from serving.repo.plan import Column, ColumnValues, ServingPlan
from serving.store import codec
from serving.store.online_store import OnlineStore
from serving.store.read_plan import ReadPlan, build_read_plan, with_dummy_key
from serving.store.reads import OnlineRead, RawRead, Status


class ReadObserver(Protocol):
    def observe_read(self, seconds: float) -> None: ...

    def count_missing(self, view: str, missing: int, stale: int) -> None: ...

    def count_degraded(self, model: str) -> None: ...


class NoObserver:
    """For batch jobs: nothing is observed."""

    def observe_read(self, seconds: float) -> None:
        pass

    def count_missing(self, view: str, missing: int, stale: int) -> None:
        pass

    def count_degraded(self, model: str) -> None:
        pass


@dataclass(frozen=True)
class StoreFallback:
    """What a model does when the online store is unavailable or over its time budget:
    fail (UNAVAILABLE to a caller; the default) or score with the stored features missing."""

    score_without_store: bool = False
    budget_s: float | None = None  # the store's time budget for this model, within the deadline


@dataclass(frozen=True)
class Prediction:
    predictions: np.ndarray  # (rows,)
    missing_per_row: np.ndarray  # (rows,) int32: absent or stale features
    features: np.ndarray  # (rows, width) the model's input, NaN = missing
    degraded: bool = False  # scored without the online store (StoreFallback)
    # (rows, features) reads.Status of the stored features (a read-only view; on-demand
    # columns MISSING there: they are not read); None when scored without the store
    status: np.ndarray | None = None


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    feature_service: str
    feature_names: tuple[str, ...]
    entities: tuple[Column, ...]
    request_fields: tuple[Column, ...]
    read_plan: ReadPlan
    on_demand: tuple[OnDemandStep, ...]
    scorer: Scorer
    store: OnlineStore
    observer: ReadObserver
    fallback: StoreFallback = StoreFallback()
    # Set when on-demand views read feature views: the read returns typed values (read_raw)
    # for their inputs too, and the model's columns are made from them.
    typed_inputs: TypedInputs | None = None

    def predict(
        self, entities: ColumnValues, request_data: ColumnValues, rows: int, timeout_s: float
    ) -> Prediction:
        started = time.perf_counter()
        budget = self.fallback.budget_s
        keys = with_dummy_key(self.read_plan, entities, rows)
        try:
            timeout = min(timeout_s, budget or timeout_s)
            features: Mapping[str, list[object]] = {}
            if self.typed_inputs is None:
                read = self.store.read(self.read_plan, keys, timeout_s=timeout)
            else:
                raw = self.store.read_raw(self.read_plan, keys, timeout_s=timeout)
                read, features = self.typed_inputs.model_read(raw, self.read_plan)
        except StoreUnavailableError:
            if not self.fallback.score_without_store:
                raise
            return self._without_store(entities, request_data, rows)
        self.observer.observe_read(time.perf_counter() - started)
        matrix = read.values
        for step in self.on_demand:
            inputs = view_inputs(step.view.plan, entities, request_data, features)
            step.fill(matrix, inputs, rows)
        if read.missing_per_row.any():
            self._count_missing(read.status[:, self.read_plan.read_columns])
        status = read.status[:, : len(self.feature_names)]
        return Prediction(self.scorer.score(matrix), read.missing_per_row, matrix, status=status)

    def _without_store(
        self, entities: ColumnValues, request_data: ColumnValues, rows: int
    ) -> Prediction:
        """Every stored feature missing; on-demand ones computed from the request as usual."""
        self.observer.count_degraded(self.name)
        matrix = np.full((rows, len(self.feature_names)), np.nan)
        absent = [None] * rows
        for step in self.on_demand:
            features = dict.fromkeys(step.input_features, absent)
            step.fill(matrix, view_inputs(step.view.plan, entities, request_data, features), rows)
        missing = np.full(rows, len(self.read_plan.read_columns), dtype=np.int32)
        return Prediction(self.scorer.score(matrix), missing, matrix, degraded=True)

    def _count_missing(self, status: np.ndarray) -> None:
        """Missing and stale values per feature view, for the metrics (only when any)."""
        slots = self.read_plan.slot_of_column
        for slot, view in enumerate(self.read_plan.view_names):
            of_view = status[:, slots == slot]
            self.observer.count_missing(
                view, int((of_view == Status.MISSING).sum()), int((of_view == Status.STALE).sum())
            )


@dataclass(frozen=True)
class TypedInputs:
    """A model's read when its on-demand views read feature views: every value typed
    (read_raw), the model's columns made numbers here, the views' inputs kept as they are."""

    width: int  # the model's inputs: the plan's first columns; its other columns feed views
    categories: Mapping[str, Mapping[str, float]]  # ref -> level -> code

    def model_read(
        self, raw: RawRead, plan: ReadPlan
    ) -> tuple[OnlineRead, dict[str, list[object]]]:
        rows = raw.status.shape[0]
        values = np.full((rows, self.width), np.nan)
        for column in plan.read_columns:
            if column < self.width:
                values[:, column] = self._numbers(plan.feature_names[column], raw.values[column])
        read = plan.read_columns[plan.read_columns < self.width]
        missing = (raw.status[:, read] != Status.PRESENT).sum(axis=1, dtype=np.int32)
        features = dict(zip(plan.feature_names, raw.values, strict=True))
        return OnlineRead(values, raw.status, raw.event_ts_us, missing), features

    def _numbers(self, ref: str, column: list[object]) -> list[float]:
        codes = self.categories.get(ref)
        if codes is not None:
            return [codes.get(v, np.nan) if isinstance(v, str) else np.nan for v in column]
        return [np.nan if v is None else float(v) for v in column]  # type: ignore[arg-type]


def build_served_model(
    loaded: LoadedModel,
    plan: ServingPlan,
    repo: Path,
    store: OnlineStore,
    observer: ReadObserver,
    scoring_threads: int = 1,  # the server's: one per request; batch jobs take every core
    fallback: StoreFallback = StoreFallback(),
) -> ServedModel:
    card = loaded.card
    refs = card.feature_refs
    service = plan.feature_service(card.feature_service)
    views = [p for p in service.projections if p.view in plan.feature_views]
    steps = on_demand_steps(plan, service.projections, repo, refs)
    sources = [source for step in steps for source in step.view.plan.sources]
    typed_inputs = None
    if sources:  # the views' inputs are read with the model's features, in one round trip
        extra = [f for step in steps for f in step.input_features if f not in refs]
        read_plan = build_read_plan(
            plan, merge_projections([*views, *sources]), [*refs, *dict.fromkeys(extra)]
        )
        typed_inputs = TypedInputs(
            len(refs),
            {
                ref: {level: float(i) for i, level in enumerate(levels)}
                for ref, levels in card.categorical_levels.items()
            },
        )
    else:
        categories = _category_codes(card.categorical_levels)
        read_plan = build_read_plan(plan, views, feature_order=refs, categories=categories)
    return ServedModel(
        name=loaded.name,
        version=str(loaded.version),
        feature_service=card.feature_service,
        feature_names=tuple(refs),
        entities=card.entities,
        request_fields=card.request_fields,
        read_plan=read_plan,
        on_demand=steps,
        scorer=Scorer(
            loaded.booster,
            scoring_threads,
            f"{loaded.name}:{loaded.version}",
            record=card.scorer,  # verified at registration: not again while it matches
            model_sha256=card.model_sha256,
        ),
        store=store,
        observer=observer,
        fallback=fallback,
        typed_inputs=typed_inputs,
    )


def _category_codes(levels: Mapping[str, Sequence[str]]) -> dict[str, dict[bytes, float]]:
    """ref -> stored Value bytes of each level -> its code, so reads never decode strings."""
    return {
        ref: {codec.encode_string(level): float(i) for i, level in enumerate(values)}
        for ref, values in levels.items()
    }
