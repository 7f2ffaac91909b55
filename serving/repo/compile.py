"""Feast at apply time: run Feast's apply and compile the registry into a serving plan.

One of the two modules that import Feast (with historical.py), and lazily: `import feast`
takes seconds (benchmarks/README.md). Everything downstream reads the plain `ServingPlan`
instead. `ensure_plan` is how other commands get a
plan: read it when current, otherwise compile it once from Feast's registry.

The plan compiles what it can: a view, on-demand view or setting Carrara cannot handle is
recorded as `Unsupported` (Feast's docs term, the reason, and which use needs it), which
`carrara apply` prints as warnings; only a command that needs it refuses (see plan.py).
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from serving.errors import PlanError
from serving.repo.feast_registry import read_registry, views_without_ttl
from serving.repo.plan import (
    DUMMY_ENTITY_ID,
    MATERIALIZE,
    SERVE,
    BatchSource,
    Column,
    FeatureServicePlan,
    FeatureViewPlan,
    OnDemandViewPlan,
    Projection,
    RepoFiles,
    ServingPlan,
    Unsupported,
    WindowAggregation,
    load_plan,
    save_plan,
)

log = logging.getLogger(__name__)


def ensure_plan(repo: Path) -> ServingPlan:
    """The current plan of `repo`, compiled from its Feast registry when missing or stale."""
    files = RepoFiles.locate(repo)
    try:
        return load_plan(files)
    except PlanError as exc:
        files.registry_fingerprint()  # no registry at all: that error names the fix
        log.info("compiling the serving plan (%s)", exc)
        return compile_plan(files)


def apply_repo(repo: Path) -> ServingPlan:
    """`feast apply` on the repo, then compile and save its serving plan."""
    files = RepoFiles.locate(repo)
    with feast_context(files.repo):
        from feast.repo_config import load_repo_config
        from feast.repo_operations import apply_total

        config = load_repo_config(files.repo, files.repo / "feature_store.yaml")
        try:
            apply_total(config, files.repo, skip_source_validation=False)
        except Exception as exc:  # Feast raises many unrelated types; all mean "repo is wrong"
            raise PlanError(f"feast apply failed on {files.repo}: {exc}") from exc
    return compile_plan(files)


def compile_plan(files: RepoFiles) -> ServingPlan:
    fingerprint = files.registry_fingerprint()
    no_ttl = views_without_ttl(read_registry(files.registry), files.project)
    with feast_context(files.repo):
        from feast import FeatureStore

        try:
            store = FeatureStore(repo_path=str(files.repo))
            views = [*store.list_feature_views(), *store.list_stream_feature_views()]
            on_demand = store.list_on_demand_feature_views()
            services = store.list_feature_services()
        except Exception as exc:  # Feast raises many unrelated types; all mean "unreadable"
            raise PlanError(f"cannot read the Feast registry {files.registry}: {exc}") from exc
        unsupported = _unsupported_settings(files)
        feature_views: dict[str, FeatureViewPlan] = {}
        for view in views:
            feature_views[view.name] = _view_plan(view, view.name in no_ttl)
            unsupported += _guarded(view, "feature view", _view_unsupported)
            if getattr(view, "aggregations", None):
                unsupported += _guarded(view, "stream feature view", _windowed_into(feature_views))
        on_demand_views: dict[str, OnDemandViewPlan] = {}
        for odfv in on_demand:
            found = _guarded(odfv, "on-demand feature view", _odfv_unsupported)
            if not any(SERVE in u.needed_by for u in found):
                found += _guarded(odfv, "on-demand feature view", _odfv_plan_into(on_demand_views))
            unsupported += found
        events_only = _served_only(feature_views)
        on_demand_views = {
            name: replace(v, sources=tuple(events_only(p) for p in v.sources))
            for name, v in on_demand_views.items()
        }
        service_plans = [_service_plan(s) for s in services]
        plan = ServingPlan(
            project=files.project,
            registry_fingerprint=fingerprint,
            feature_views=feature_views,
            on_demand_views=on_demand_views,
            feature_services={
                s.name: replace(s, projections=tuple(events_only(p) for p in s.projections))
                for s in service_plans
            },
            unsupported=tuple(unsupported),
            entity_key_serialization_version=files.entity_key_serialization_version,
        )
    for record in plan.unsupported:  # `carrara apply` prints them; commands warn of them
        log.info("%s", record.describe())
    return save_plan(plan, files.plan)


def _guarded(view: Any, kind: str, check: Any) -> list[Unsupported]:
    """`check(view)`, or the exception it raised as the reason the view is unsupported."""
    try:
        found: list[Unsupported] = check(view)
    except Exception as exc:  # a construct this code does not know: record, never crash
        return [
            Unsupported(view.name, type(view).__name__, f"cannot compile it: {exc}", None, kind)
        ]
    return found


def _unsupported_settings(files: RepoFiles) -> list[Unsupported]:
    """feature_store.yaml settings that change the bytes in ways Carrara does not follow."""
    found = []
    version = files.config.get("entity_key_serialization_version", 3)
    if version not in (1, 2, 3):
        found.append(
            Unsupported(
                None,
                f"entity_key_serialization_version: {version}",
                "Feast 0.67 writes entity keys in versions 1, 2 and 3 only",
                kind="setting",
            )
        )
    registry = files.config.get("registry")
    if isinstance(registry, dict) and registry.get("enable_online_feature_view_versioning"):
        found.append(
            Unsupported(
                None,
                "registry.enable_online_feature_view_versioning: true",
                "Feast then names hash fields after each view's version (view_vN)",
                kind="setting",
            )
        )
    if files.online_store.get("skip_dedup"):
        found.append(
            Unsupported(
                None,
                "online_store.skip_dedup: true",
                "ignored: Carrara always writes a row only when newer than the stored one, "
                "so its result differs from Feast's only where Redis holds newer rows",
                kind="setting",
                needed_by=(),
            )
        )
    return found


@contextlib.contextmanager
def feast_context(repo: Path) -> Iterator[None]:
    """Feast chdirs into the repo and python-mode UDFs `import transforms`: undo both after.

    Also silences Feast's "experimental" warning about on-demand views, printed on every use.
    """
    cwd = os.getcwd()
    _forget_repo_modules(repo)  # Feast imports definitions by module name: not another repo's
    sys.path.insert(0, str(repo))
    try:
        with warnings.catch_warnings():
            # Printed on every use of on-demand views; says nothing actionable to our users.
            warnings.filterwarnings("ignore", "On demand feature view is an experimental")
            yield
    finally:
        os.chdir(cwd)
        with contextlib.suppress(ValueError):
            sys.path.remove(str(repo))
        _forget_repo_modules(repo)


def _forget_repo_modules(repo: Path) -> None:
    """Drop cached modules named like the repo's files, so the next import reads them anew."""
    names = {p.stem for p in repo.glob("*.py")} | {
        p.parent.name for p in repo.glob("*/__init__.py")
    }
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        installed = path.startswith((sys.prefix, sys.base_prefix))  # never a library's module
        if name.split(".")[0] in names and not installed:
            del sys.modules[name]


def _view_plan(view: Any, no_ttl: bool) -> FeatureViewPlan:
    """The view as plain data; `no_ttl`: declared with ttl=None (the registry has no ttl)."""
    source = view.batch_source
    keys = tuple(Column(c.name, str(c.dtype)) for c in view.entity_columns)
    return FeatureViewPlan(
        name=view.name,
        join_keys=keys or (Column(DUMMY_ENTITY_ID, "String"),),  # entityless, as Feast keys it
        features=tuple(
            Column(f.name, str(f.dtype), bool(f.vector_index), int(f.vector_length or 0))
            for f in view.features
        ),
        ttl_s=None if no_ttl else int(view.ttl.total_seconds()) if view.ttl else 0,
        source=BatchSource(
            path=source.path,
            timestamp_field=source.timestamp_field,
            created_timestamp_column=source.created_timestamp_column or None,
            field_mapping=dict(source.field_mapping or {}),
        )
        if _parquet_file_source(source)
        else None,
        online=bool(view.online),
        enabled=bool(getattr(view, "enabled", True)),
        push_source=_push_source_name(view),
    )


AGGREGATION_FUNCTIONS = {"sum": "sum", "count": "count", "mean": "mean", "avg": "mean",
                         "min": "min", "max": "max"}  # fmt: skip
NUMERIC = ("Int32", "Int64", "Float32", "Float64")
DEFAULT_HOP_S = 10  # tiles when the view sets no tiling_hop_size: gcd(windows, 10 s)


def _windowed_into(plans: dict[str, FeatureViewPlan]) -> Any:
    """A check that replaces the stream feature view's plan by its windowed form (features:
    the aggregations' outputs) and returns what it cannot keep online."""

    def compile_into(view: Any) -> list[Unsupported]:
        windowed, found = _windowed(view, plans[view.name])
        if not any(SERVE in u.needed_by for u in found):
            plans[view.name] = windowed
        return found

    return compile_into


def _windowed(view: Any, plain: FeatureViewPlan) -> tuple[FeatureViewPlan, list[Unsupported]]:
    """Feast's `Aggregation`s as `WindowAggregation`s over tiles of `hop_s` seconds. Output
    types are the schema's when declared there, else what the function gives (count: Int64;
    mean: Float64; sum, min, max: the input's integer or float kind)."""
    import math

    keys = {k.name for k in plain.join_keys}
    declared = {f.name: str(f.dtype) for f in view.features if f.name not in keys}
    found: list[Unsupported] = []

    def refuse(construct: str, reason: str) -> None:
        found.append(Unsupported(view.name, construct, reason, None, "stream feature view"))

    aggregations, windows = [], []
    for agg in view.aggregations:
        function = AGGREGATION_FUNCTIONS.get(agg.function)
        window = agg.time_window.total_seconds() if agg.time_window is not None else 0.0
        if function is None:
            refuse(f'Aggregation(function="{agg.function}")', "Carrara keeps sum, count, "
                   "mean (avg), min and max over time windows")  # fmt: skip
        elif window <= 0 or window != int(window):
            refuse(f"Aggregation over {agg.column!r} with time_window={agg.time_window}",
                   "a window is a whole, positive number of seconds")  # fmt: skip
        else:
            name = agg.resolved_name(agg.time_window)
            aggregations.append(WindowAggregation(name, agg.column, function, int(window)))
            windows.append(int(window))
    hop = view.tiling_hop_size.total_seconds() if view.tiling_hop_size else None
    hop_s = int(hop) if hop else math.gcd(*windows, DEFAULT_HOP_S)
    if hop is not None and (hop <= 0 or hop != int(hop)):
        refuse(f"tiling_hop_size={view.tiling_hop_size}", "tiles are whole seconds")
    for agg in aggregations:
        if hop_s and agg.window_s % hop_s:
            refuse(f"{agg.name}: a {agg.window_s} s window over {hop_s} s tiles",
                   "every window must be a whole number of tiles (tiling_hop_size)")  # fmt: skip
    inputs = {a.column: declared.get(a.column, "Float64") for a in aggregations}
    outputs = []
    for agg in aggregations:
        dtype = declared.get(agg.name) or _output_type(agg.function, inputs[agg.column])
        if dtype not in NUMERIC:
            refuse(f"{agg.name}: {dtype}", "a window's output is Int32, Int64, Float32 or Float64")
        elif agg.function == "mean" and dtype.startswith("Int"):
            refuse(f"{agg.name}: {dtype}", "a mean is Float32 or Float64")
        outputs.append(Column(agg.name, dtype))
    if plain.ttl_s and hop_s and plain.ttl_s < hop_s:  # values are rewritten once a tile
        refuse(f"ttl={plain.ttl_s} s over {hop_s} s tiles",
               "windows are rewritten once per tile: a ttl shorter than a tile makes them stale "
               "between ticks")  # fmt: skip
    undeclared = [a.name for a in aggregations if a.name not in declared]
    if undeclared:  # Carrara serves them; Feast's reads look features up in the schema
        log.warning(
            "stream feature view %r: %s not in its schema: Carrara serves them, Feast's "
            "get_online_features cannot read them (declare each as a Field)",
            view.name, ", ".join(undeclared),
        )  # fmt: skip
    event_columns = tuple(Column(name, dtype) for name, dtype in inputs.items())
    if any(c.dtype not in NUMERIC for c in event_columns):
        refuse("an aggregated column that is not a number", "windows sum numbers")
    windowed = replace(
        plain,
        features=tuple(outputs),
        aggregations=tuple(aggregations),
        event_columns=event_columns,
        hop_s=hop_s,
    )
    return windowed, found


def _output_type(function: str, input_type: str) -> str:
    if function == "count":
        return "Int64"
    if function == "mean":
        return "Float64"
    return "Int64" if input_type.startswith("Int") else "Float64"


def _push_source_name(view: Any) -> str | None:
    """The PushSource a view takes pushed rows from (Feast: its stream_source), if any."""
    from feast.data_source import PushSource

    stream = getattr(view, "stream_source", None)
    return stream.name if isinstance(stream, PushSource) else None


def _parquet_file_source(source: Any) -> bool:
    from feast import FileSource
    from feast.data_format import ParquetFormat

    file_format = getattr(source, "file_format", None)
    parquet = file_format is None or isinstance(file_format, ParquetFormat)
    return isinstance(source, FileSource) and bool(source.path) and parquet


def _view_unsupported(view: Any) -> list[Unsupported]:
    """What stops Carrara from materializing the view as `feast materialize` does."""
    found = []
    source = view.batch_source
    if source is not None and not _parquet_file_source(source):
        file_format = getattr(source, "file_format", None)
        construct = type(source).__name__ + (
            f" with {type(file_format).__name__}" if file_format is not None else ""
        )
        reason = "Carrara materializes FileSource batch sources of Parquet files only"
        found.append(Unsupported(view.name, construct, reason, needed_by=(MATERIALIZE,)))
    if source is None:
        reason = "it has no batch source to materialize from"
        found.append(
            Unsupported(view.name, "a view without batch_source", reason, needed_by=(MATERIALIZE,))
        )
    transformation = getattr(view, "feature_transformation", None) or getattr(view, "udf", None)
    if transformation is not None and not getattr(view, "aggregations", None):
        construct = f"{type(view).__name__} with a transformation"
        reason = "Carrara writes source columns as they are; it runs no transformation"
        found.append(Unsupported(view.name, construct, reason, needed_by=(MATERIALIZE,)))
    if getattr(view, "aggregations", None):
        reason = (
            "its windows are kept from pushed events (Push, `carrara ingest`); "
            "materializing its batch source too would count them twice"
        )
        construct = "StreamFeatureView with aggregations"
        found.append(Unsupported(view.name, construct, reason, needed_by=(MATERIALIZE,)))
    if getattr(view, "source_views", None):
        reason = "Carrara materializes views over a batch source only"
        found.append(
            Unsupported(
                view.name,
                "a feature view over other feature views (source_views)",
                reason,
                needed_by=(MATERIALIZE,),
            )
        )
    return found


def _odfv_unsupported(view: Any) -> list[Unsupported]:
    found = []
    if view.mode not in ("python", "pandas"):
        construct = f'mode="{view.mode}"'
        reason = "Carrara runs python- and pandas-mode on-demand views"
        found.append(
            Unsupported(view.name, construct, reason, None, "on-demand feature view", (SERVE,))
        )
    if getattr(view, "write_to_online_store", False):
        reason = "Carrara runs no on-demand transformation at materialize time"
        found.append(
            Unsupported(
                view.name,
                "on-demand feature view with write_to_online_store=True",
                reason,
                None,
                "on-demand feature view",
                (MATERIALIZE,),
            )
        )
    return found


def _odfv_plan_into(plans: dict[str, OnDemandViewPlan]) -> Any:
    def compile_into(view: Any) -> list[Unsupported]:
        plans[view.name] = _odfv_plan(view)
        return []

    return compile_into


def _odfv_plan(view: Any) -> OnDemandViewPlan:
    request_fields = tuple(
        Column(f.name, str(f.dtype))
        for src in view.source_request_sources.values()
        for f in src.schema
    )
    sources = tuple(
        Projection(
            view=p.name,
            name=p.name_to_use(),
            join_key_map=dict(p.join_key_map or {}),
            features=tuple(f.name for f in p.features),
        )
        for p in view.source_feature_view_projections.values()
    )
    transformation = view.feature_transformation
    source = transformation.udf_string or ""
    module, function = _delegate_target(source)
    return OnDemandViewPlan(
        name=view.name,
        request_fields=request_fields,
        sources=sources,
        outputs=tuple(Column(f.name, str(f.dtype)) for f in view.features),
        udf_name=transformation.udf.__name__,
        udf_source=source,
        module=module,
        function=function,
        mode=view.mode,
        singleton=bool(view.singleton),
        used_inputs=None if module else subscripted_inputs(source, transformation.udf.__name__),
    )


def subscripted_inputs(source: str, udf_name: str) -> tuple[str, ...] | None:
    """The names `udf_name` reads from its first argument, when it only ever reads it as
    `arg["name"]`; None when it uses the argument any other way (or cannot be parsed), as
    then it may read any input."""
    try:
        tree = ast.parse(source.lstrip())
    except SyntaxError:
        return None
    udf = next(
        (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == udf_name),
        None,
    )
    if udf is None or not udf.args.args:
        return None
    arg = udf.args.args[0].arg
    body = [node for statement in udf.body for node in ast.walk(statement)]  # no decorators
    names: list[str] = []
    subscripted: set[int] = set()
    for node in body:
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == arg
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
            and isinstance(node.ctx, ast.Load)
        ):
            names.append(node.slice.value)
            subscripted.add(id(node.value))
    uses = [n for n in body if isinstance(n, ast.Name) and n.id == arg]
    if any(id(n) not in subscripted for n in uses):
        return None
    return tuple(dict.fromkeys(names))


def _delegate_target(source: str) -> tuple[str | None, str | None]:
    """(module, function) when the UDF body imports a module and returns `module.f(inputs)`.

    That is the repo's convention (a thin wrapper over `transforms.py`): the server then calls
    `module.f` on numpy columns directly. Other bodies are run from their source, like Feast.
    """
    try:
        tree = ast.parse(source.lstrip())
    except SyntaxError:
        return None, None
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    calls = [
        node.func
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in imported
    ]
    if len(calls) != 1:
        return None, None
    call = calls[0]
    assert isinstance(call.value, ast.Name)  # narrowed by the filter above
    return call.value.id, call.attr


def _served_only(views: dict[str, FeatureViewPlan]) -> Any:
    """A projection without the event columns a windowed view's schema declares: Feast counts
    them among its features, but they are the events' columns, never a value of the view."""

    def served(projection: Projection) -> Projection:
        view = views.get(projection.view)
        if view is None or not view.windowed:
            return projection
        outputs = {f.name for f in view.features}
        return replace(projection, features=tuple(f for f in projection.features if f in outputs))

    return served


def _service_plan(service: Any) -> FeatureServicePlan:
    return FeatureServicePlan(
        name=service.name,
        projections=tuple(
            Projection(
                view=p.name,
                name=p.name_to_use(),
                join_key_map=dict(p.join_key_map or {}),
                features=tuple(f.name for f in p.features),
            )
            for p in service.feature_view_projections
        ),
    )
