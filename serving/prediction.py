"""The request path: resolve a model once into a plan, then per request read, join, score.

At start-up (and on hot reload) each served model version becomes a `ModelPlan`: the Redis
read plan for its feature views (key encoders, hashed fields, ttl, positions in the model's
input vector, category codes for string features), its on-demand views and where their
outputs go, the inputs a caller must send, and a LightGBM scorer. A request then costs one
pipelined Redis round trip, the on-demand functions on numpy columns, and the scorer.

`Predictor` owns the served plans: a dict swapped whole on reload (readers never lock),
with versions that are not aliased loaded on first use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from serving import codec
from serving.errors import ModelError, NotFoundError, PlanError
from serving.metrics import Metrics
from serving.model_columns import OnDemandStep, on_demand_steps
from serving.online_features import FeatureLookup, build_lookup
from serving.online_store import OnlineStore, ReadPlan, Status, build_read_plan
from serving.plan import Column, RepoFiles, ServingPlan, load_plan
from serving.registry import DEFAULT_ALIAS, LoadedModel, ModelRegistry
from serving.scorer import Scorer

log = logging.getLogger(__name__)
MAX_PINNED = 64  # "name:version" refs kept loaded besides the aliased ones
Columns = Mapping[str, Any]  # request column -> one value per row (a list or numpy array)


@dataclass(frozen=True)
class Prediction:
    predictions: np.ndarray  # (rows,)
    missing_per_row: np.ndarray  # (rows,) int32: absent or stale features
    features: np.ndarray  # (rows, width) the model's input, NaN = missing


@dataclass(frozen=True)
class ModelPlan:
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
    metrics: Metrics

    def predict(
        self, entities: Columns, request_data: Columns, rows: int, timeout_s: float
    ) -> Prediction:
        started = time.perf_counter()
        read = self.store.read(self.read_plan, entities, timeout_s=timeout_s)
        self.metrics.redis_latency.observe(time.perf_counter() - started)
        matrix = read.values
        for step in self.on_demand:
            step.fill(matrix, request_data, rows)
        if read.missing_per_row.any():
            self._count_missing(read.status[:, self.read_plan.read_columns])
        return Prediction(self.scorer.score(matrix), read.missing_per_row, matrix)

    def _count_missing(self, status: np.ndarray) -> None:
        """Missing and stale values per feature view, for the metrics (only when any)."""
        slots = self.read_plan.slot_of_column
        for slot, view in enumerate(self.read_plan.view_names):
            of_view = status[:, slots == slot]
            self.metrics.count_missing(
                view, int((of_view == Status.MISSING).sum()), int((of_view == Status.STALE).sum())
            )


def build_model_plan(
    loaded: LoadedModel,
    plan: ServingPlan,
    repo: Path,
    store: OnlineStore,
    metrics: Metrics,
    scoring_threads: int = 1,  # the server's: one per request; batch jobs take every core
) -> ModelPlan:
    card = loaded.card
    refs = card.feature_refs
    service = plan.feature_service(card.feature_service)
    views = [p for p in service.projections if p.view in plan.feature_views]
    read_plan = build_read_plan(
        plan, views, feature_order=refs, categories=_category_codes(card.categorical_levels)
    )
    return ModelPlan(
        name=loaded.name,
        version=str(loaded.version),
        feature_service=card.feature_service,
        feature_names=tuple(refs),
        entities=card.entities,
        request_fields=card.request_fields,
        read_plan=read_plan,
        on_demand=on_demand_steps(plan, service.projections, repo, refs),
        scorer=Scorer(loaded.booster, scoring_threads, f"{loaded.name}:{loaded.version}"),
        store=store,
        metrics=metrics,
    )


def _definitions(plan: ServingPlan) -> ServingPlan:
    """The plan without what changes when only materialization intervals were recorded."""
    return replace(plan, registry_fingerprint="", path=None)


def _stamp(path: Path | None) -> tuple[int, int] | None:
    """(mtime, size) of a file, to notice a rewrite without reading it."""
    try:
        stat = path.stat() if path else None
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size) if stat else None


def _category_codes(levels: Mapping[str, Sequence[str]]) -> dict[str, dict[bytes, float]]:
    """ref -> stored Value bytes of each level -> its code, so reads never decode strings."""
    return {
        ref: {raw: float(i) for i, raw in enumerate(codec.encode_values("String", list(values)))}
        for ref, values in levels.items()
    }


class Predictor:
    """The served model plans by reference ("eta", "eta@staging", "eta:3")."""

    def __init__(
        self,
        plan: ServingPlan,
        repo: Path,
        store: OnlineStore,
        registry: ModelRegistry,
        metrics: Metrics,
    ) -> None:
        self.plan = plan
        self._repo = repo
        self._store = store
        self._registry = registry
        self._metrics = metrics
        self._by_ref: dict[str, ModelPlan] = {}
        self._by_version: dict[tuple[str, int], ModelPlan] = {}
        self._by_pinned_ref: dict[str, ModelPlan] = {}  # "eta:3" refs served so far
        self._aliases: dict[str, dict[str, int]] = {}
        self._lookups: dict[tuple[str, tuple[str, ...]], FeatureLookup] = {}
        self._lock = threading.Lock()  # serialises loads; reads never take it
        self._plan_stamp = _stamp(plan.path)

    def model(self, ref: str) -> ModelPlan:
        plan = self._by_ref.get(ref) or self._by_pinned_ref.get(ref)
        if plan is not None:
            return plan
        name, version = self._registry.resolve(ref)  # NotFoundError names the missing part
        with self._lock:
            plan = self._load(name, version)
            if ref == f"{name}:{version}" and len(self._by_pinned_ref) < MAX_PINNED:
                self._by_pinned_ref[ref] = plan  # a version never changes: no disk next time
            return plan

    def metric_label(self, name: str) -> str:
        """`name` if it is a served model or a feature service, else "other" (bounded labels)."""
        if not name or name in self._by_ref or name in self._by_pinned_ref:
            return name
        return name if name in self.plan.feature_services else "other"

    def model_names(self) -> list[str]:
        return sorted(self._aliases)

    def model_infos(self) -> list[ModelInfo]:
        infos = []
        for name, aliases in sorted(self._aliases.items()):
            served = [
                self._by_ref[f"{name}@{a}"]
                for a in sorted(aliases)
                if f"{name}@{a}" in self._by_ref
            ]
            if not served:
                continue
            model = self._by_ref.get(name, served[0])
            infos.append(
                ModelInfo(
                    name=name,
                    versions=[str(v) for v in self._registry.versions(name)],
                    aliases={a: str(v) for a, v in aliases.items()},
                    feature_service=model.feature_service,
                    entities=model.entities,
                    request_fields=model.request_fields,
                )
            )
        return infos

    def lookup(self, feature_service: str | None, refs: Sequence[str]) -> FeatureLookup:
        key = (feature_service or "", tuple(refs))
        found = self._lookups.get(key)
        if found is None:
            try:
                found = build_lookup(self.plan, self._store, feature_service, refs)
            except PlanError as exc:
                raise NotFoundError(str(exc)) from None
            if len(self._lookups) < 1_000:  # bounded: refs come from clients
                self._lookups[key] = found
        return found

    def load_all(self) -> None:
        """Load every aliased version; a broken one is logged and skipped."""
        with self._lock:
            self._aliases = self._registry.alias_state()
            self._by_ref = self._refs(self._aliases, previous={})

    def reload(self) -> bool:
        """Pick up a new serving plan or alias changes; True if anything changed.

        What fails to load is logged and the plan or version it would replace keeps serving.
        """
        try:
            state = self._registry.alias_state()
        except ModelError as exc:  # e.g. a hand-edited aliases.json: keep serving what we have
            log.error("registry unreadable, models unchanged: %s", exc)
            return False
        new_plan = self._changed_plan()
        if new_plan is None and state == self._aliases:
            return False
        with self._lock:
            if new_plan is not None:
                self.plan = new_plan
                self._by_version.clear()  # rebuilt against the new plan
                self._by_pinned_ref = {}
                self._lookups = {}
            self._by_ref = self._refs(state, previous=self._by_ref)
            self._aliases = state
        log.info("models reloaded: %s", state)
        return True

    def _changed_plan(self) -> ServingPlan | None:
        """The repo's plan when `carrara apply` changed its definitions since we read it.

        `carrara materialize` rewrites the plan too, only to record the registry's new
        fingerprint: that is adopted quietly, without rebuilding any model.
        """
        stamp = _stamp(self.plan.path)
        if stamp == self._plan_stamp:
            return None
        try:
            plan = load_plan(RepoFiles.locate(self._repo))
        except PlanError as exc:  # e.g. mid-write by materialize: look again next time
            log.info("serving plan changed but is not current yet: %s", exc)
            return None
        self._plan_stamp = stamp
        if _definitions(plan) == _definitions(self.plan):
            self.plan = plan
            return None
        log.info("serving plan reloaded from %s", plan.path)
        return plan

    def _refs(
        self, state: Mapping[str, Mapping[str, int]], previous: Mapping[str, ModelPlan]
    ) -> dict[str, ModelPlan]:
        """ref -> plan for every alias; an alias whose version fails keeps its previous plan."""
        refs: dict[str, ModelPlan] = {}
        for name, aliases in state.items():
            for alias, version in aliases.items():
                ref = f"{name}@{alias}"
                try:
                    model = self._load(name, version)
                except (ModelError, NotFoundError, PlanError) as exc:
                    kept = previous.get(ref)
                    log.error(
                        "cannot serve %s:%s as %s (%s); %s",
                        name,
                        version,
                        ref,
                        exc,
                        f"keeping version {kept.version}" if kept else "not served",
                    )
                    if kept is None:
                        continue
                    model = kept
                refs[ref] = model
                if alias == DEFAULT_ALIAS:
                    refs[name] = model
        return refs

    def _load(self, name: str, version: int) -> ModelPlan:
        key = (name, version)
        if key not in self._by_version:
            loaded = self._registry.load(f"{name}:{version}", self.plan)
            self._by_version[key] = build_model_plan(
                loaded, self.plan, self._repo, self._store, self._metrics
            )
        return self._by_version[key]


@dataclass(frozen=True)
class ModelInfo:
    """What ListModels tells a caller about one served model."""

    name: str
    versions: list[str]
    aliases: dict[str, str]
    feature_service: str
    entities: tuple[Column, ...]
    request_fields: tuple[Column, ...]
