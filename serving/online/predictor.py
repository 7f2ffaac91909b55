"""The served models by reference ("eta", "eta@staging", "eta:3"), and their hot reload.

The servicer asks `Predictor.model(ref)` for a `ServedModel` (serving/inference/served_model.py:
read plan, on-demand steps and scorer, built once per version) and calls its `predict`.
`Predictor` owns the served models: a dict swapped whole on reload (readers never lock), with
versions that are not aliased loaded on first use. `reload` follows alias moves and a new
serving plan (`carrara apply`); a version that fails to load is logged and the one it would
replace keeps serving. Also here: the GetOnlineFeatures lookups (feature_lookup.py), cached
per (service, refs), and what ListModels reports.
"""

from __future__ import annotations

import logging
import random
import threading
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from serving.errors import ModelError, NotFoundError, PlanError
from serving.inference.served_model import ServedModel, StoreFallback, build_served_model
from serving.ingest.push import Pusher
from serving.models.aliases import Traffic
from serving.models.registry import DEFAULT_ALIAS, ModelRegistry
from serving.online.feature_lookup import FeatureLookup, build_lookup
from serving.online.metrics import ServerMetrics
from serving.repo.plan import (
    Column,
    ColumnValues,
    FeatureViewPlan,
    RepoFiles,
    ServingPlan,
    load_plan,
)
from serving.store.online_store import OnlineStore

log = logging.getLogger(__name__)
MAX_PINNED = 64  # "name:version" refs kept loaded besides the aliased ones


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


class Predictor:
    """The served model plans by reference ("eta", "eta@staging", "eta:3")."""

    def __init__(
        self,
        plan: ServingPlan,
        repo: Path,
        store: OnlineStore,
        registry: ModelRegistry,
        metrics: ServerMetrics,
        fallbacks: Mapping[str, StoreFallback] | None = None,  # by model name
        max_future_skew_s: float = 300.0,  # pushes: see serving/ingest/push.py
    ) -> None:
        self.plan = plan
        self._max_future_skew_s = max_future_skew_s
        self._pusher: Pusher | None = None
        self._fallbacks = dict(fallbacks or {})
        self._repo = repo
        self._store = store
        self._registry = registry
        self._metrics = metrics
        self._by_ref: dict[str, ServedModel] = {}
        self._by_version: dict[tuple[str, int], ServedModel] = {}
        self._broken: dict[tuple[str, int], ModelError] = {}  # until the plan changes
        self._by_pinned_ref: dict[str, ServedModel] = {}  # "eta:3" refs served so far
        self._aliases: dict[str, dict[str, int]] = {}
        self._traffic: dict[str, dict[str, Traffic]] = {}  # model -> canary/shadow settings
        self._lookups: dict[tuple[str, tuple[str, ...]], FeatureLookup] = {}
        self._lock = threading.Lock()  # serialises loads; reads never take it
        self._plan_stamp = _stamp(plan.path)

    def model(self, ref: str) -> ServedModel:
        plan = self._by_ref.get(ref) or self._by_pinned_ref.get(ref)
        if plan is not None:
            return plan
        name, version = self._registry.resolve(ref)  # NotFoundError names the missing part
        with self._lock:
            plan = self._load(name, version)
            if ref == f"{name}:{version}" and len(self._by_pinned_ref) < MAX_PINNED:
                self._by_pinned_ref[ref] = plan  # a version never changes: no disk next time
            return plan

    def route(self, ref: str, model: ServedModel, entities: ColumnValues) -> Route:
        """Who answers a call of `ref` (resolved to `model`) and who scores in its shadow.

        Only the production alias is routed: "eta" or "eta@production". A canary answers its
        share of the calls, chosen by a hash of the first row's sticky key (one entity, one
        version; by call when it has none); a shadow scores its share on the answering
        version's vector. A canary or shadow whose inputs differ is not routed to (logged
        when the aliases are loaded)."""
        if ":" in ref:  # a pinned version: no alias routed it
            return Route(model, "", "primary")
        name, _, alias = ref.partition("@")
        if alias not in ("", DEFAULT_ALIAS):
            return Route(model, alias, "primary")
        traffic = self._traffic.get(name)
        if not traffic:
            return Route(model, DEFAULT_ALIAS, "primary")
        answering, alias, role = model, DEFAULT_ALIAS, "primary"
        canary = self._by_ref.get(f"{name}@canary")
        settings = traffic.get("canary")
        if (
            canary
            and settings
            and _same_inputs(canary, model)
            and _chosen(name, settings, entities)
        ):
            answering, alias, role = canary, "canary", "canary"
        shadow = self._by_ref.get(f"{name}@shadow")
        settings = traffic.get("shadow")
        if shadow is None or settings is None or shadow is answering:
            return Route(answering, alias, role)
        if shadow.feature_names != answering.feature_names or random.random() >= settings.share:
            return Route(answering, alias, role)
        return Route(answering, alias, role, shadow)

    def metric_label(self, name: str) -> str:
        """`name` if it is a served model or a feature service, else "other" (bounded labels)."""
        if not name or name in self._by_ref or name in self._by_pinned_ref:
            return name
        return name if name in self.plan.feature_services else "other"

    def model_names(self) -> list[str]:
        return sorted(self._aliases)

    def serves(self, name: str) -> bool:
        """Whether `name` (its production alias) is loaded and served."""
        return name in self._by_ref

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

    def served_views(self) -> list[FeatureViewPlan]:
        """The feature views the aliased models read."""
        services = {model.feature_service for model in self._by_ref.values()}
        projections = (p for s in services for p in self.plan.feature_service(s).projections)
        names = {p.view for p in projections if p.view in self.plan.feature_views}
        return [self.plan.feature_views[name] for name in sorted(names)]

    def pusher(self) -> Pusher:
        """Pushes against the current plan and this server's online store: one per plan (a
        windowed push's writer registers its script once, not per call)."""
        known = self._pusher
        if known is None or known.plan is not self.plan:
            known = self._pusher = Pusher(
                self.plan, self._repo, self._store, self._max_future_skew_s
            )
        return known

    def lookup(self, feature_service: str | None, refs: Sequence[str]) -> FeatureLookup:
        key = (feature_service or "", tuple(refs))
        found = self._lookups.get(key)
        if found is None:
            try:
                found = build_lookup(self.plan, self._store, feature_service, refs, self._repo)
            except PlanError as exc:
                raise NotFoundError(str(exc)) from None
            if len(self._lookups) < 1_000:  # bounded: refs come from clients
                self._lookups[key] = found
        return found

    def load_all(self) -> None:
        """Load every aliased version; a broken one is logged and skipped."""
        with self._lock:
            self._aliases = self._registry.alias_state()
            self._traffic = self._registry.traffic_state()
            self._by_ref = self._refs(self._aliases, previous={})
            self._check_traffic()

    def reload(self) -> bool:
        """Pick up a new serving plan or alias changes; True if anything changed.

        What fails to load is logged and the plan or version it would replace keeps serving.
        """
        try:
            state = self._registry.alias_state()
            traffic = self._registry.traffic_state()
        except ModelError as exc:  # e.g. a hand-edited aliases.json: keep serving what we have
            log.error("registry unreadable, models unchanged: %s", exc)
            return False
        new_plan = self._changed_plan()
        if new_plan is None and state == self._aliases and traffic == self._traffic:
            return False
        with self._lock:
            if new_plan is not None:
                self.plan = new_plan
                self._by_version.clear()  # rebuilt against the new plan
                self._broken.clear()
                self._by_pinned_ref = {}
                self._lookups = {}
            self._by_ref = self._refs(state, previous=self._by_ref)
            self._aliases = state
            self._traffic = traffic
            self._check_traffic()
        log.info("models reloaded: %s", state)
        return True

    def _check_traffic(self) -> None:
        """Say which canary or shadow aliases cannot take traffic, and why (once per load)."""
        for name, traffic in self._traffic.items():
            production = self._by_ref.get(name)
            for alias in traffic:
                routed = self._by_ref.get(f"{name}@{alias}")
                if production is None or routed is None:
                    continue
                if alias == "canary" and not _same_inputs(routed, production):
                    log.error("%s@canary takes other inputs than %s: not routed to", name, name)
                if alias == "shadow" and routed.feature_names != production.feature_names:
                    log.error(
                        "%s@shadow (version %s) reads other features than %s: a shadow is "
                        "scored on the answering version's vector, so it is not scored",
                        *(name, routed.version, name),
                    )

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
        self, state: Mapping[str, Mapping[str, int]], previous: Mapping[str, ServedModel]
    ) -> dict[str, ServedModel]:
        """ref -> plan for every alias; an alias whose version fails keeps its previous plan."""
        refs: dict[str, ServedModel] = {}
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

    def _load(self, name: str, version: int) -> ServedModel:
        key = (name, version)
        if key in self._broken:  # versions never change: do not check a broken one again
            raise self._broken[key]
        if key not in self._by_version:
            try:
                loaded = self._registry.load(f"{name}:{version}", self.plan)
                self._by_version[key] = build_served_model(
                    loaded,
                    self.plan,
                    self._repo,
                    self._store,
                    self._metrics,
                    fallback=self._fallbacks.get(name, StoreFallback()),
                )
            except ModelError as exc:
                broken = exc if exc.ref else ModelError(str(exc), ref=f"{name}:{version}")
                self._broken[key] = broken
                raise broken from exc
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


@dataclass(frozen=True)
class Route:
    """The version that answers a call, the alias and role it answers in, and the version
    scored in its shadow (None: none)."""

    model: ServedModel
    alias: str  # "production", "canary", "staging", ...; "" for a pinned "name:version"
    role: str  # "primary" or "canary"
    shadow: ServedModel | None = None


def _same_inputs(a: ServedModel, b: ServedModel) -> bool:
    return (a.entities, a.request_fields) == (b.entities, b.request_fields)


def _chosen(name: str, traffic: Traffic, entities: ColumnValues) -> bool:
    """Whether this call goes to the canary: by the sticky key's hash (stable across
    processes and restarts), else by chance."""
    if traffic.key is None or not entities.get(traffic.key):
        return random.random() < traffic.share
    value = entities[traffic.key][0]
    bucket = zlib.crc32(f"{name}\0{value}".encode()) / 2**32
    return bucket < traffic.share
