"""On-demand transforms online: the repo's own python-mode functions, called on numpy columns.

The plan names, for each on-demand view, the module and function its Feast wrapper delegates
to (`transforms.trip_geometry`): we import that module from the repo folder once and call the
function with the request's columns, exactly the code Feast runs offline. A view whose body
does not delegate is rebuilt from its source text, as Feast does, and called with lists.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from serving.errors import InvalidRequestError, PlanError
from serving.repo.plan import ColumnValues, OnDemandViewPlan

Transform = Callable[[ColumnValues], Mapping[str, Any]]


@dataclass(frozen=True)
class OnDemandView:
    plan: OnDemandViewPlan
    transform: Transform

    def compute(self, inputs: ColumnValues, rows: int) -> dict[str, np.ndarray]:
        """Outputs as float64 columns of `rows` values; a failing function names the view."""
        try:
            outputs = self.transform(inputs)
            return {
                column.name: _column(outputs[column.name], rows) for column in self.plan.outputs
            }
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise InvalidRequestError(
                f"on-demand view {self.plan.name!r} failed on the request data: {exc!r}"
            ) from exc


def _column(values: Any, rows: int) -> np.ndarray:
    column = np.asarray(values, dtype=np.float64)
    if column.shape != (rows,):
        raise ValueError(f"returned shape {column.shape}, expected ({rows},)")
    return column


def load_on_demand_view(plan: OnDemandViewPlan, repo: Path) -> OnDemandView:
    if plan.input_features:
        raise PlanError(
            f"on-demand view {plan.name!r} reads feature views ({', '.join(plan.input_features)}); "
            "only request-source inputs are served online so far"
        )
    if plan.module and plan.function:
        module = import_repo_module(plan.module, repo)
        function = getattr(module, plan.function, None)
        if not callable(function):
            raise PlanError(f"{plan.module}.{plan.function} is not a function in {repo}")
        return OnDemandView(plan, function)
    return OnDemandView(plan, _rebuild_udf(plan))


def import_repo_module(name: str, repo: Path) -> ModuleType:
    """Import `name` from the repo folder, as the Feast wrappers do with the repo on sys.path."""
    path = repo / f"{name.replace('.', '/')}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None or not path.exists():
        raise PlanError(f"module {name!r} not found at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


def _rebuild_udf(plan: OnDemandViewPlan) -> Transform:
    source = plan.udf_source.lstrip()
    body = source[source.index("def ") :] if source.startswith("@") else source
    namespace: dict[str, Any] = {"__name__": "carrara_udf", "np": np, "numpy": np}
    exec(compile(body, f"<on-demand view {plan.name}>", "exec"), namespace)  # trusted repo code
    udf = namespace[plan.udf_name]

    def call_with_lists(inputs: ColumnValues) -> Mapping[str, Any]:
        result: Mapping[str, Any] = udf({k: list(v) for k, v in inputs.items()})
        return result

    return call_with_lists
