"""On-demand transforms online: the repo's own functions, called as Feast calls them.

The plan names, for each on-demand view, its mode and, when its body only delegates to a
repo module (`transforms.trip_geometry`), that module and function: we import the module from
the repo folder once and call the function with the request's columns, exactly the code Feast
runs offline. A view whose body does not delegate is rebuilt from its source text, as Feast
does. The inputs are Feast's: request fields, the join keys, and every feature of the views
it reads under both its short and its full ("view__feature") name.
- python mode: a dict of columns (lists, None where missing) -> a dict of columns;
- python singleton mode: called once per row with scalars -> a dict of scalars;
- pandas mode: a DataFrame whose column dtypes are the ones Feast's arrow table converts to
  (Float32 as float32, integers with a null as float64) -> a DataFrame.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from serving.errors import InvalidRequestError, PlanError
from serving.repo.plan import ColumnValues, OnDemandViewPlan

Transform = Callable[[Any], Any]
# pandas-mode columns by Feast dtype when no value is null (a null makes integers float64
# and bools object, as pyarrow's to_pandas does)
_PANDAS_DTYPES = {
    "Float32": np.float32,
    "Float64": np.float64,
    "Int32": np.int32,
    "Int64": np.int64,
    "Bool": np.bool_,
}
_FLOATS = frozenset({"Float32", "Float64"})


@dataclass(frozen=True)
class OnDemandView:
    plan: OnDemandViewPlan
    transform: Transform
    input_dtypes: Mapping[str, str]  # input column (short and full names) -> Feast dtype

    def compute(self, inputs: ColumnValues, rows: int) -> dict[str, Any]:
        """Each output as a column of `rows` values (a list or a numpy array); a failing
        function names the view."""
        try:
            if self.plan.mode == "pandas":
                return self._pandas(inputs, rows)
            if self.plan.singleton:
                return self._singleton(inputs, rows)
            outputs = self.transform(inputs)
            return {c.name: _column(outputs[c.name], rows) for c in self.plan.outputs}
        except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as exc:
            raise InvalidRequestError(
                f"on-demand view {self.plan.name!r} failed on the request data: {exc!r}"
            ) from exc

    def compute_floats(self, inputs: ColumnValues, rows: int) -> dict[str, np.ndarray]:
        """Outputs as float64 columns (a model's input)."""
        outputs = self.compute(inputs, rows)
        try:
            return {name: np.asarray(column, dtype=np.float64) for name, column in outputs.items()}
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(
                f"on-demand view {self.plan.name!r} returned a value that is not a number: {exc}"
            ) from exc

    def _singleton(self, inputs: ColumnValues, rows: int) -> dict[str, Any]:
        outputs: dict[str, list[Any]] = {c.name: [] for c in self.plan.outputs}
        for row in range(rows):
            result = self.transform({name: column[row] for name, column in inputs.items()})
            for name, column in outputs.items():
                column.append(result[name])
        return outputs

    def _pandas(self, inputs: ColumnValues, rows: int) -> dict[str, Any]:
        pd = _pandas_module()
        frame = pd.DataFrame(
            {
                name: _pandas_column(column, self.input_dtypes.get(name))
                for name, column in inputs.items()
            },
            index=pd.RangeIndex(rows),
        )
        result = self.transform(frame)
        return {c.name: _column(result[c.name].to_numpy(), rows) for c in self.plan.outputs}


def _pandas_module() -> Any:
    """pandas, imported by pandas-mode views only (their functions use it anyway)."""
    import pandas  # type: ignore[import-untyped]

    return pandas


def _pandas_column(values: Any, dtype: str | None) -> Any:
    numpy_type = _PANDAS_DTYPES.get(dtype or "")
    if numpy_type is None:
        return np.array(values, dtype=object) if isinstance(values, list) else values
    column = list(values)
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in column):
        if dtype in _FLOATS or dtype in ("Int32", "Int64"):
            return np.array([math.nan if v is None else v for v in column], np.float64)
        return np.array(column, dtype=object)
    return np.array(column, dtype=numpy_type)


def _column(values: Any, rows: int) -> Any:
    if not hasattr(values, "__len__") or isinstance(values, str | bytes):
        raise ValueError(f"returned {type(values).__name__}, expected a column of {rows} values")
    if len(values) != rows:
        raise ValueError(f"returned {len(values)} values, expected {rows}")
    return values


def load_on_demand_view(
    plan: OnDemandViewPlan, repo: Path, input_dtypes: Mapping[str, str] | None = None
) -> OnDemandView:
    dtypes = dict(input_dtypes or {})
    if plan.module and plan.function:
        module = import_repo_module(plan.module, repo)
        function = getattr(module, plan.function, None)
        if not callable(function):
            raise PlanError(f"{plan.module}.{plan.function} is not a function in {repo}")
        return OnDemandView(plan, function, dtypes)
    return OnDemandView(plan, _rebuild_udf(plan), dtypes)


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
    """The view's function from its source text (Feast keeps it as `udf_string`), with the
    names such bodies use from their file: numpy and, for pandas mode, pandas."""
    source = plan.udf_source.lstrip()
    body = source[source.index("def ") :] if source.startswith("@") else source
    namespace: dict[str, Any] = {"__name__": "carrara_udf", "np": np, "numpy": np}
    if plan.mode == "pandas":
        namespace.update(pd=_pandas_module(), pandas=_pandas_module())
    try:
        exec(compile(body, f"<on-demand view {plan.name}>", "exec"), namespace)  # repo code
        udf: Transform = namespace[plan.udf_name]
    except (SyntaxError, KeyError, NameError, ValueError) as exc:
        raise PlanError(
            f"on-demand view {plan.name!r}: cannot rebuild its function: {exc}"
        ) from exc
    if plan.mode == "pandas" or plan.singleton:
        return udf

    def call_with_lists(inputs: ColumnValues) -> Mapping[str, Any]:
        result: Mapping[str, Any] = udf({k: list(v) for k, v in inputs.items()})
        return result

    return call_with_lists
