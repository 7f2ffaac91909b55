"""The serving plan: a Feast repository's definitions as plain data, readable without Feast.

`carrara apply` compiles it (see compile.py) into a JSON file beside the Feast registry;
`serve`, `materialize` and `score` read it instead of paying for `import feast`, which takes
seconds. It carries the SHA-256 of the registry it was compiled from: when the
registry changes (another `feast apply`), the plan is stale and is compiled again.

Invariants: types are Feast's own type strings ("Int64", "Float32", "Array(String)", "Map",
"Struct({name: String})", ...); join keys keep the view's declared order (key encoding sorts
them itself); an entityless view has Feast's dummy join key `__dummy_id` (String, always "");
a projection's `join_key_map` maps the view's join key to the column the caller sends.

The plan compiles what it can: a construct it cannot compile (a pandas-mode on-demand view, a
batch source other than Parquet files, a transformation, ...) is recorded as `Unsupported`,
with Feast's docs term and the reason, and only a command that needs it refuses (looking a
view up names the record). `ttl_s` keeps Feast's ttl=None (None) apart from ttl=0 (0); both
mean "no ttl" to reads and to an incremental start, as in Feast 0.67.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from serving.errors import PlanError
from serving.files import write_atomic

PLAN_FORMAT = 4
PLAN_FILE = "carrara_plan.json"
DUMMY_ENTITY_ID = "__dummy_id"  # Feast's join key of entityless views, its value always ""
MATERIALIZE, SERVE = "materialize", "serve"  # what needs a construct: writing it, or reading it


# Columns of rows by name: one value per row (a list or a numpy array), as requests, batch
# inputs and on-demand functions hold them.
ColumnValues = Mapping[str, Any]


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str
    vector_index: bool = False  # Feast's Field.vector_index: materialize checks the width
    vector_length: int = 0  # the declared width; 0: the first non-null row's, as Feast infers


@dataclass(frozen=True)
class BatchSource:
    path: str  # as declared; relative paths are relative to the repo
    timestamp_field: str
    created_timestamp_column: str | None = None
    field_mapping: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WindowAggregation:
    """One of a stream feature view's `Aggregation`s: `function` of the pushed `column` over
    the last `window_s` seconds of event time, served as the feature `name` (Feast's
    `resolved_name`, e.g. `sum_trip_requested_60s`). serving/repo/windows.py says exactly
    which events a window holds."""

    name: str
    column: str
    function: str  # sum, count, mean, min, max ("avg" is compiled to "mean")
    window_s: int


@dataclass(frozen=True)
class FeatureViewPlan:
    name: str
    join_keys: tuple[Column, ...]
    features: tuple[Column, ...]
    ttl_s: int | None  # None: declared without ttl (ttl=None); 0: ttl=0; both: no ttl
    source: BatchSource | None
    online: bool = True
    enabled: bool = True  # Feast's `enabled`: a disabled view is not materialized by default
    push_source: str | None = None  # the PushSource whose pushed rows it takes
    # A stream feature view with aggregations: its features are the aggregations' outputs,
    # kept in tiles of `hop_s` seconds of event time from the pushed `event_columns`.
    aggregations: tuple[WindowAggregation, ...] = ()
    event_columns: tuple[Column, ...] = ()
    hop_s: int = 0

    @property
    def windowed(self) -> bool:
        return bool(self.aggregations)

    @property
    def entityless(self) -> bool:
        return tuple(k.name for k in self.join_keys) == (DUMMY_ENTITY_ID,)

    def feature(self, name: str) -> Column:
        for column in self.features:
            if column.name == name:
                return column
        raise PlanError(f"feature view {self.name!r} has no feature {name!r}")


@dataclass(frozen=True)
class OnDemandViewPlan:
    """An on-demand view: its inputs (request fields, feature-view projections it reads), its
    outputs, and its function: `module`/`function` when a python-mode body delegates to one,
    else rebuilt from `udf_source`. `mode` is Feast's ("python" or "pandas"); a singleton
    python view is called once per row with scalars."""

    name: str
    request_fields: tuple[Column, ...]
    sources: tuple[Projection, ...]  # the feature-view projections it reads, all features
    outputs: tuple[Column, ...]
    udf_name: str
    udf_source: str
    module: str | None = None
    function: str | None = None
    mode: str = "python"
    singleton: bool = False
    # The input names its body reads, when it reads its argument only as `inputs["name"]`
    # (found at apply time); None: any (it passes the argument on, iterates it, ...).
    used_inputs: tuple[str, ...] | None = None

    @property
    def input_features(self) -> tuple[str, ...]:
        """Full names ("projection__feature") of the features it reads."""
        return tuple(
            f"{p.name}__{f}"
            for p in self.sources
            for f in p.features
            if self.uses(f) or self.uses(f"{p.name}__{f}")
        )

    def uses(self, name: str) -> bool:
        return self.used_inputs is None or name in self.used_inputs


@dataclass(frozen=True)
class Unsupported:
    """A construct of the repo the plan could not compile, and why; `feature` when only one
    feature is concerned, `view` None for a repo-wide setting. `needed_by` names the uses that
    must refuse it: MATERIALIZE (writing the view) and/or SERVE (reading or computing it)."""

    view: str | None  # the feature view, on-demand feature view or feature service
    construct: str  # Feast's docs term for it, e.g. 'on-demand feature view, mode="pandas"'
    reason: str
    feature: str | None = None
    kind: str = "feature view"  # "feature view", "on-demand feature view", "setting", ...
    needed_by: tuple[str, ...] = (MATERIALIZE, SERVE)

    def describe(self) -> str:
        where = "setting" if self.view is None else f"{self.kind} {self.view!r}"
        if self.feature is not None:
            where += f", feature {self.feature!r}"
        return f"{where}: {self.construct} is not supported by Carrara ({self.reason})"


@dataclass(frozen=True)
class Projection:
    view: str  # feature view or on-demand view name
    name: str  # the name the service uses (alias), = view when not projected
    join_key_map: dict[str, str]
    features: tuple[str, ...]


@dataclass(frozen=True)
class FeatureServicePlan:
    name: str
    projections: tuple[Projection, ...]


@dataclass(frozen=True)
class ServingPlan:
    project: str
    registry_fingerprint: str
    feature_views: dict[str, FeatureViewPlan]
    on_demand_views: dict[str, OnDemandViewPlan]
    feature_services: dict[str, FeatureServicePlan]
    format: int = PLAN_FORMAT
    path: Path | None = None  # where it was read from or written to (not serialised)
    unsupported: tuple[Unsupported, ...] = ()
    entity_key_serialization_version: int = 3  # feature_store.yaml's, when compiled

    def feature_view(self, name: str) -> FeatureViewPlan:
        self.require_supported([name], SERVE)
        try:
            return self.feature_views[name]
        except KeyError:
            raise PlanError(f"no feature view {name!r} in project {self.project!r}") from None

    def unsupported_in(self, names: Sequence[str], use: str) -> list[Unsupported]:
        """The records `use` must refuse for the named views, repo-wide settings included."""
        wanted = set(names)
        return [
            u
            for u in self.unsupported
            if use in u.needed_by and (u.view is None or u.view in wanted)
        ]

    def require_supported(self, names: Sequence[str], use: str) -> None:
        """PlanError naming the first construct of the named views `use` cannot handle."""
        found = self.unsupported_in(names, use)
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise PlanError(found[0].describe() + more)

    def push_views(self, push_source: str) -> list[FeatureViewPlan]:
        """The views that take the rows pushed to `push_source` (NotFound-like PlanError)."""
        views = [v for v in self.feature_views.values() if v.push_source == push_source]
        if not views:
            known = sorted({v.push_source for v in self.feature_views.values() if v.push_source})
            raise PlanError(
                f"no push source {push_source!r} feeds a feature view of project "
                f"{self.project!r} (known: {', '.join(known) or 'none'})"
            )
        return views

    def feature_service(self, name: str) -> FeatureServicePlan:
        try:
            return self.feature_services[name]
        except KeyError:
            known = ", ".join(sorted(self.feature_services)) or "none"
            raise PlanError(f"no feature service {name!r} (known: {known})") from None


@dataclass(frozen=True)
class RepoFiles:
    """Where a repository keeps its config, registry and plan; read from feature_store.yaml."""

    repo: Path
    config: dict[str, Any]

    @classmethod
    def locate(cls, repo: Path) -> RepoFiles:
        config_path = repo / "feature_store.yaml"
        try:
            text = config_path.read_text()
        except OSError as exc:
            raise PlanError(f"no Feast repository at {repo}: cannot read {config_path}") from exc
        try:
            config = yaml.safe_load(os.path.expandvars(text))
        except yaml.YAMLError as exc:
            raise PlanError(f"{config_path} is not valid YAML: {exc}") from exc
        if not isinstance(config, dict) or "project" not in config:
            raise PlanError(f"{config_path} has no 'project'")
        return cls(repo=repo.resolve(), config=config)

    @property
    def project(self) -> str:
        return str(self.config["project"])

    @property
    def registry(self) -> Path:
        registry = self.config.get("registry", "data/registry.db")
        path = Path(registry["path"] if isinstance(registry, dict) else registry)
        return path if path.is_absolute() else self.repo / path

    @property
    def plan(self) -> Path:
        return self.registry.with_name(PLAN_FILE)

    @property
    def online_store(self) -> dict[str, Any]:
        store = self.config.get("online_store") or {}
        return store if isinstance(store, dict) else {"type": store}

    @property
    def entity_key_serialization_version(self) -> int:
        return int(self.config.get("entity_key_serialization_version", 3))

    def registry_fingerprint(self) -> str:
        try:
            return hashlib.sha256(self.registry.read_bytes()).hexdigest()
        except OSError as exc:
            raise PlanError(
                f"no Feast registry at {self.registry}: run `carrara apply --repo {self.repo}`"
            ) from exc


def save_plan(plan: ServingPlan, path: Path) -> ServingPlan:
    """Write atomically: a reader never sees half a plan."""
    data = asdict(plan)
    data.pop("path")
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True))
    return _with_path(plan, path)


def load_plan(files: RepoFiles) -> ServingPlan:
    """The repo's plan, refusing a missing, foreign-format or stale one with the fix to run."""
    path = files.plan
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(
            f"no serving plan at {path}: run `carrara apply --repo {files.repo}`"
        ) from None
    except (OSError, ValueError) as exc:
        raise PlanError(f"unreadable serving plan {path}: {exc}") from exc
    if data.get("format") != PLAN_FORMAT:
        raise PlanError(
            f"serving plan {path} has format {data.get('format')}, expected {PLAN_FORMAT}"
        )
    plan = plan_from_dict(data)
    if plan.entity_key_serialization_version != files.entity_key_serialization_version:
        raise PlanError(
            f"serving plan {path} is stale: feature_store.yaml's entity_key_serialization_version "
            f"changed since it was compiled; run `carrara apply --repo {files.repo}`"
        )
    if plan.registry_fingerprint != files.registry_fingerprint():
        raise PlanError(
            f"serving plan {path} is stale: the registry changed since it was compiled; "
            f"run `carrara apply --repo {files.repo}`"
        )
    return _with_path(plan, path)


def plan_is_current(files: RepoFiles) -> bool:
    try:
        load_plan(files)
    except PlanError:
        return False
    return True


def plan_from_dict(data: dict[str, Any]) -> ServingPlan:
    try:
        return ServingPlan(
            project=data["project"],
            registry_fingerprint=data["registry_fingerprint"],
            format=data["format"],
            feature_views={k: _view_from_dict(v) for k, v in data["feature_views"].items()},
            on_demand_views={k: _odfv_from_dict(v) for k, v in data["on_demand_views"].items()},
            feature_services={
                k: FeatureServicePlan(
                    name=v["name"],
                    projections=tuple(_projection(p) for p in v["projections"]),
                )
                for k, v in data["feature_services"].items()
            },
            unsupported=tuple(
                Unsupported(**{**u, "needed_by": tuple(u["needed_by"])})
                for u in data["unsupported"]
            ),
            entity_key_serialization_version=data["entity_key_serialization_version"],
        )
    except (KeyError, TypeError) as exc:
        raise PlanError(f"serving plan is malformed ({exc!r}); run `carrara apply` again") from exc


def _columns(items: list[dict[str, Any]]) -> tuple[Column, ...]:
    return tuple(Column(**item) for item in items)


def _view_from_dict(v: dict[str, Any]) -> FeatureViewPlan:
    source = v["source"]
    return FeatureViewPlan(
        name=v["name"],
        join_keys=_columns(v["join_keys"]),
        features=_columns(v["features"]),
        ttl_s=v["ttl_s"],
        source=BatchSource(**source) if source else None,
        online=v["online"],
        enabled=v["enabled"],
        push_source=v.get("push_source"),
        aggregations=tuple(WindowAggregation(**a) for a in v.get("aggregations", ())),
        event_columns=_columns(v.get("event_columns", [])),
        hop_s=v.get("hop_s", 0),
    )


def _odfv_from_dict(v: dict[str, Any]) -> OnDemandViewPlan:
    return OnDemandViewPlan(
        **{
            **v,
            "request_fields": _columns(v["request_fields"]),
            "sources": tuple(_projection(p) for p in v["sources"]),
            "outputs": _columns(v["outputs"]),
            "used_inputs": None if v["used_inputs"] is None else tuple(v["used_inputs"]),
        }
    )


def _projection(p: dict[str, Any]) -> Projection:
    return Projection(**{**p, "features": tuple(p["features"])})


def _with_path(plan: ServingPlan, path: Path) -> ServingPlan:
    from dataclasses import replace

    return replace(plan, path=path)
