"""Feast at apply time: run Feast's apply and compile the registry into a serving plan.

One of the two modules that import Feast (with historical.py), and lazily: `import feast`
takes seconds (benchmarks/README.md). Everything downstream reads the plain `ServingPlan`
instead. `ensure_plan` is how other commands get a
plan: read it when current, otherwise compile it once from Feast's registry.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from serving.errors import PlanError
from serving.repo.plan import (
    BatchSource,
    Column,
    FeatureServicePlan,
    FeatureViewPlan,
    OnDemandViewPlan,
    Projection,
    RepoFiles,
    ServingPlan,
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
    with feast_context(files.repo):
        from feast import FeatureStore

        try:
            store = FeatureStore(repo_path=str(files.repo))
            views = store.list_feature_views()
            on_demand = store.list_on_demand_feature_views()
            services = store.list_feature_services()
        except Exception as exc:  # Feast raises many unrelated types; all mean "unreadable"
            raise PlanError(f"cannot read the Feast registry {files.registry}: {exc}") from exc
        plan = ServingPlan(
            project=files.project,
            registry_fingerprint=fingerprint,
            feature_views={v.name: _view_plan(v) for v in views},
            on_demand_views={v.name: _odfv_plan(v) for v in on_demand},
            feature_services={s.name: _service_plan(s) for s in services},
        )
    return save_plan(plan, files.plan)


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


def _view_plan(view: Any) -> FeatureViewPlan:
    source = view.batch_source
    path = getattr(source, "path", None)
    return FeatureViewPlan(
        name=view.name,
        join_keys=tuple(Column(c.name, str(c.dtype)) for c in view.entity_columns),
        features=tuple(Column(f.name, str(f.dtype)) for f in view.features),
        ttl_s=int(view.ttl.total_seconds()) if view.ttl else 0,
        source=BatchSource(
            path=path,
            timestamp_field=source.timestamp_field,
            created_timestamp_column=source.created_timestamp_column or None,
            field_mapping=dict(source.field_mapping or {}),
        )
        if path
        else None,
        online=bool(view.online),
    )


def _odfv_plan(view: Any) -> OnDemandViewPlan:
    if view.mode != "python" or view.singleton:
        raise PlanError(
            f"on-demand feature view {view.name!r}: only python mode over columns is served "
            f"(mode={view.mode!r}, singleton={view.singleton})"
        )
    request_fields = tuple(
        Column(f.name, str(f.dtype))
        for src in view.source_request_sources.values()
        for f in src.schema
    )
    input_features = tuple(
        f"{p.name_to_use()}__{f.name}"
        for p in view.source_feature_view_projections.values()
        for f in p.features
    )
    transformation = view.feature_transformation
    source = transformation.udf_string or ""
    module, function = _delegate_target(source)
    return OnDemandViewPlan(
        name=view.name,
        request_fields=request_fields,
        input_features=input_features,
        outputs=tuple(Column(f.name, str(f.dtype)) for f in view.features),
        udf_name=transformation.udf.__name__,
        udf_source=source,
        module=module,
        function=function,
    )


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
