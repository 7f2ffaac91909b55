"""Feast's point-in-time historical retrieval, one output row per input row, in order.

`get_historical_features` on Feast's file (dask) offline store, as of 0.67, has two ways of
losing entity rows, both handled here so training and batch scoring see every row:

- it keeps one row per (a view's join keys, event time): two rows sharing both come back as
  one. Identical inputs are retrieved once and copied back; the rest are spread over calls in
  which no two rows share a view's keys and event time;
- a row whose entity has feature rows, none of them inside the view's ttl window, is dropped
  instead of getting nulls. Rows missing from the whole-service answer are retrieved again one
  projection at a time; a projection that still drops a row has no valid value for it: null.
  (A request for on-demand features alone fails in that store, so those are computed with
  the on-demand view's own Feast transform.)

Both losses are silent in Feast, so the result is checked: exactly one row per input row.

Windowed views (stream feature views with aggregations) are beyond Feast here: their batch
source holds raw events, not the aggregations' columns. A service reading one is retrieved one
projection at a time: a windowed projection's columns are its windows as of each row's
`event_timestamp` (serving/repo/windows.py, the definition the online store keeps), the other
views' come from Feast as above, and an on-demand view is computed by its Feast transform over
the columns of the views it reads (windowed ones included, whether the service lists them or
not).

Always `filter_by_created_timestamp=True`: a feature row created after the entity row's time
(a late backfill) is not seen, as the online store could not have held it then. Feast is
imported inside `historical_features` only: the import takes seconds.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa

from serving.errors import DataError
from serving.repo.compile import feast_context
from serving.repo.plan import FeatureViewPlan, Projection, ServingPlan
from serving.repo.windows import WindowIndex, event_us, read_events, window_index, window_values

log = logging.getLogger(__name__)

TIMESTAMP = "event_timestamp"
ROW_ID = "_carrara_row"
CHUNK_ROWS = 2_500  # per Feast call: progress every few seconds, a few % of call overhead

Progress = Callable[[int], None]


def historical_features(
    repo: Path,
    plan: ServingPlan,
    service: str,
    inputs: pd.DataFrame,
    progress: Progress,
) -> pd.DataFrame:
    """The service's feature columns (`projection__feature`) for each row of `inputs`.

    `inputs` holds `event_timestamp` and what a caller sends (join keys, request fields).
    Rows come back in the order of `inputs`, one per row.
    """
    projections = plan.feature_service(service).projections
    refs = [f"{p.name}__{f}" for p in projections for f in p.features]
    key_sets = [(TIMESTAMP, *_keys(plan, p)) for p in projections if p.view in plan.feature_views]
    group = inputs.groupby(list(inputs.columns), sort=False, dropna=False).ngroup().to_numpy()
    first = ~pd.Series(group).duplicated().to_numpy()
    unique = inputs[first].assign(**{ROW_ID: group[first]})
    with feast_context(repo), warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", "On demand feature view is an experimental", RuntimeWarning
        )
        from feast import FeatureStore

        store = FeatureStore(repo_path=str(repo))
        windows = Windows(repo, plan)
        if any(windows.reads_windows(p) for p in projections):
            found = _by_projection(store, plan, projections, unique, windows)[refs]
            progress(len(unique))
        else:
            found = _fetch(store, store.get_feature_service(service), unique, key_sets, progress)
            found = found[refs]
        lost = unique[~unique[ROW_ID].isin(found.index)]
        if len(lost):
            log.info("%d rows have no feature row inside some view's ttl", len(lost))
            found = pd.concat([found, _by_projection(store, plan, projections, lost, windows)])
    progress(len(inputs) - len(unique))  # duplicates, copied below
    result = found.sort_index().infer_objects()
    if len(result) != len(unique) or not result.index.is_unique:
        raise DataError(f"Feast returned {len(result)} rows for {len(unique)} distinct inputs")
    return result.loc[group].reset_index(drop=True)


def _keys(plan: ServingPlan, projection: Projection) -> tuple[str, ...]:
    """The columns a feature view projection joins on (its view's keys, renamed)."""
    view = plan.feature_views[projection.view]
    return tuple(projection.join_key_map.get(k.name, k.name) for k in view.join_keys)


def _fetch(
    store: Any,
    features: Any,
    frame: pd.DataFrame,
    key_sets: list[tuple[str, ...]],
    progress: Progress,
) -> pd.DataFrame:
    """One Feast answer (a feature service or refs) indexed by ROW_ID; dropped rows absent."""
    parts = []
    for chunk in _calls(frame, key_sets):
        try:
            job = store.get_historical_features(
                entity_df=chunk,
                features=features,
                full_feature_names=True,
                filter_by_created_timestamp=True,
            )
            parts.append(job.to_df())
        except Exception as exc:  # Feast and dask raise many types; all mean "cannot join"
            raise DataError(f"Feast historical retrieval failed: {exc}") from exc
        progress(len(chunk))
    if not parts:
        return pd.DataFrame(index=pd.Index([], name=ROW_ID))
    return pd.concat(parts).set_index(ROW_ID)


class Windows:
    """Windowed views' values as of entity rows; each view's events are read once."""

    def __init__(self, repo: Path, plan: ServingPlan) -> None:
        self.repo, self.plan = repo, plan
        self._indexes: dict[str, WindowIndex] = {}

    def windowed(self, view: str) -> FeatureViewPlan | None:
        found = self.plan.feature_views.get(view)
        return found if found is not None and found.windowed else None

    def reads_windows(self, projection: Projection) -> bool:
        """A windowed view's projection, or an on-demand view reading one."""
        odfv = self.plan.on_demand_views.get(projection.view)
        sources = odfv.sources if odfv is not None else (projection,)
        return any(self.windowed(source.view) for source in sources)

    def columns(self, projection: Projection, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        """`projection__feature` columns as of each row's TIMESTAMP; a feature that is no
        aggregation of the view is null."""
        view = self.windowed(projection.view)
        assert view is not None
        index = self._indexes.get(view.name)
        if index is None:
            index = self._indexes[view.name] = window_index(view, read_events(view, self.repo))
        keys = [pa.array(rows[c]) for c in _keys(self.plan, projection)]
        at_us = event_us(pa.array(pd.to_datetime(rows[TIMESTAMP], utc=True)))
        names = [a.name for a in view.aggregations if a.name in projection.features]
        table = window_values(index, keys, at_us, names)
        return {
            f"{projection.name}__{f}": (
                table[f].to_pandas().to_numpy() if f in names else np.full(len(rows), None)
            )
            for f in projection.features
        }


def _by_projection(
    store: Any,
    plan: ServingPlan,
    projections: Sequence[Projection],
    lost: pd.DataFrame,
    windows: Windows,
) -> pd.DataFrame:
    """Rows the whole service dropped (or every row, for a service reading windows), one
    projection at a time; null where one drops them.

    A view projection is asked for through its view's own name (`zone_stats:open_requests`)
    with the renamed join keys copied back to the view's key columns: the same view, ttl and
    source as the projection, in a form Feast accepts outside a feature service; a windowed
    one is computed (`Windows`). An on-demand projection is then computed by Feast's own
    transform over the rows and the features of the views it reads (fetched before, or now):
    what Feast's retrieval runs after its joins.
    """
    columns: dict[str, np.ndarray] = {}
    for projection in sorted(projections, key=lambda p: p.view not in plan.feature_views):
        if projection.view in plan.feature_views:
            columns.update(_view_columns(store, plan, projection, lost, windows))
            continue
        odfv = store.get_on_demand_feature_view(projection.view)
        inputs = dict(columns)
        odfv_plan = plan.on_demand_views.get(projection.view)
        for source in odfv_plan.sources if odfv_plan is not None else ():
            if any(f"{source.name}__{f}" not in inputs for f in source.features):
                inputs = {**_view_columns(store, plan, source, lost, windows), **inputs}
        table = pa.Table.from_pandas(lost.assign(**inputs), preserve_index=False)
        part = odfv.transform_arrow(table, full_feature_names=True).to_pandas()
        prefix = odfv.projection.name_to_use()
        for feature in projection.features:
            columns[f"{projection.name}__{feature}"] = part[f"{prefix}__{feature}"].to_numpy()
    return pd.DataFrame(columns, index=pd.Index(lost[ROW_ID], name=ROW_ID))


def _view_columns(
    store: Any, plan: ServingPlan, projection: Projection, rows: pd.DataFrame, windows: Windows
) -> dict[str, np.ndarray]:
    """A feature-view projection's `projection__feature` columns for `rows` (ROW_ID order)."""
    if windows.windowed(projection.view):
        return windows.columns(projection, rows)
    view_keys = [k.name for k in plan.feature_views[projection.view].join_keys]
    frame = rows[[TIMESTAMP, ROW_ID]].assign(
        **{k: rows[c] for k, c in zip(view_keys, _keys(plan, projection), strict=True)}
    )
    refs = [f"{projection.view}:{f}" for f in projection.features]
    part = _fetch(store, refs, frame, [(TIMESTAMP, *view_keys)], lambda _rows: None)
    part = part.reindex(rows[ROW_ID])
    return {
        f"{projection.name}__{f}": part[f"{projection.view}__{f}"].to_numpy()
        for f in projection.features
    }


def _calls(frame: pd.DataFrame, key_sets: list[tuple[str, ...]]) -> Iterator[pd.DataFrame]:
    rounds = _rounds(frame, key_sets)
    for r in range(int(rounds.max(initial=0)) + 1):
        members = frame[rounds == r]
        for start in range(0, len(members), CHUNK_ROWS):
            yield members.iloc[start : start + CHUNK_ROWS]


def _rounds(frame: pd.DataFrame, key_sets: list[tuple[str, ...]]) -> np.ndarray:
    """A call number per row such that rows of one call never share any key set's values."""
    rounds = np.zeros(len(frame), dtype=np.int64)
    if not any(frame.duplicated(list(keys)).any() for keys in key_sets):
        return rounds  # the usual case: one round
    per_set = [list(zip(*(frame[c].tolist() for c in keys), strict=True)) for keys in key_sets]
    taken: list[set[tuple[int, tuple[object, ...]]]] = []
    for row in range(len(frame)):
        marks = {(i, values[row]) for i, values in enumerate(per_set)}
        slot = next((r for r, used in enumerate(taken) if not marks & used), len(taken))
        if slot == len(taken):
            taken.append(set())
        taken[slot] |= marks
        rounds[row] = slot
    return rounds
