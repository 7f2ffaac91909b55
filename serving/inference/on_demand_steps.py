"""Where on-demand features go in a model's input matrix; shared by online and batch scoring.

Concern: a model's feature service may hold python-mode on-demand views. Each becomes an
`OnDemandStep`: the repo's own function (serving/repo/on_demand.py) and the columns of the
model input its outputs fill. The server (served_model.py) and the point-in-time batch scorer
(serving/batch/offline_model.py) build their steps here, so both run the same functions on the
same request columns into the same places.

Invariants: positions index the model's input order (its card's feature refs, Feast's full
names `projection__feature`); a view none of whose outputs the model uses has no step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.repo.on_demand import OnDemandView, load_on_demand_view
from serving.repo.plan import Projection, ServingPlan


@dataclass(frozen=True)
class OnDemandStep:
    view: OnDemandView
    positions: tuple[tuple[str, int], ...]  # output name -> column in the model input

    def fill(self, matrix: np.ndarray, request_data: Mapping[str, Any], rows: int) -> None:
        """Compute the view on the request columns and write its outputs into `matrix`."""
        outputs = self.view.compute(request_data, rows)
        for name, position in self.positions:
            matrix[:, position] = outputs[name]


def on_demand_steps(
    plan: ServingPlan, projections: Sequence[Projection], repo: Path, refs: Sequence[str]
) -> tuple[OnDemandStep, ...]:
    """A step per on-demand projection of `projections` that feeds any of `refs`."""
    steps = (
        on_demand_step(p, plan, repo, refs) for p in projections if p.view in plan.on_demand_views
    )
    return tuple(step for step in steps if step.positions)


def on_demand_step(
    projection: Projection, plan: ServingPlan, repo: Path, refs: Sequence[str]
) -> OnDemandStep:
    view = load_on_demand_view(plan.on_demand_views[projection.view], repo)
    index = {ref: i for i, ref in enumerate(refs)}
    positions = tuple(
        (name, index[f"{projection.name}__{name}"])
        for name in projection.features
        if f"{projection.name}__{name}" in index
    )
    return OnDemandStep(view, positions)
