"""Point-in-time training sets: a label table joined to a feature service by Feast.

The label table (Parquet in the repo) carries an `event_timestamp`, the label, and every input
a caller would send online (join keys, request fields). Feast's historical retrieval joins
the service's features, on-demand ones included, computed by the same functions the server
runs.

Invariants: rows are the label rows in the window [start, end), sorted by event time (ties
keep file order), and row i of the result is label row i. For a label at time t, each view
contributes its latest row with event_timestamp <= t, event_timestamp >= t - ttl and
created <= t (`filter_by_created_timestamp`): what the online store could have held at t,
never a row from t's future or one the view's ttl has expired; otherwise the feature is
missing (see serving/repo/historical.py for how Feast is made to keep every row).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa
import pyarrow.parquet as pq

from serving.errors import DataError
from serving.models.card import model_inputs
from serving.repo.historical import TIMESTAMP, Progress, historical_features
from serving.repo.plan import Column, ServingPlan


@dataclass(frozen=True)
class TrainingSet:
    frame: pd.DataFrame  # event_timestamp, label, caller inputs, then the feature refs
    label: str
    feature_refs: tuple[str, ...]  # the service's features, in its projection order
    feature_types: dict[str, str]
    entities: tuple[Column, ...]
    request_fields: tuple[Column, ...]
    fingerprint: str


def service_refs(plan: ServingPlan, service: str) -> tuple[str, ...]:
    """Feast's full names (`projection__feature`) of a service, in the service's order."""
    return tuple(
        f"{p.name}__{feature}"
        for p in plan.feature_service(service).projections
        for feature in p.features
    )


@dataclass(frozen=True)
class LabelSet:
    """Validated label rows of a window, and what the service needs from a caller."""

    frame: pd.DataFrame  # event_timestamp, label, caller inputs; sorted by time
    service: str
    label: str
    feature_refs: tuple[str, ...]
    feature_types: dict[str, str]
    entities: tuple[Column, ...]
    request_fields: tuple[Column, ...]


def load_labels(
    plan: ServingPlan,
    service: str,
    label_table: Path,
    label: str,
    window: tuple[datetime | None, datetime | None],
) -> LabelSet:
    """Everything that can be checked before Feast: the service, the table, the window."""
    refs = service_refs(plan, service)
    entities, request_fields, types = model_inputs(plan, service, refs)
    frame = read_labels(label_table, label, (*entities, *request_fields), window)
    return LabelSet(frame, service, label, refs, types, entities, request_fields)


def join_features(
    repo: Path, plan: ServingPlan, labels: LabelSet, progress: Progress | None = None
) -> TrainingSet:
    """The labels with their point-in-time features (Feast's historical retrieval)."""
    inputs = labels.frame.drop(columns=[labels.label])
    retrieve = _RETRIEVAL.get()
    features = retrieve(repo, plan, labels.service, inputs, progress or (lambda _rows: None))
    frame = pd.concat([labels.frame, features], axis=1)
    return TrainingSet(
        frame=frame,
        label=labels.label,
        feature_refs=labels.feature_refs,
        feature_types=labels.feature_types,
        entities=labels.entities,
        request_fields=labels.request_fields,
        fingerprint=fingerprint(frame),
    )


Retrieval = Callable[[Path, ServingPlan, str, pd.DataFrame, Progress], pd.DataFrame]
_RETRIEVAL: ContextVar[Retrieval] = ContextVar("retrieval", default=historical_features)


@contextmanager
def retrieval_engine(retrieve: Retrieval) -> Iterator[None]:
    """Within, `join_features` retrieves with `retrieve` (same signature and result as
    `historical_features`, e.g. on a Ray cluster): `carrara train --engine ray` reaches the
    retrieval under train() without an engine argument on every function between."""
    token = _RETRIEVAL.set(retrieve)
    try:
        yield
    finally:
        _RETRIEVAL.reset(token)


def build_training_set(
    repo: Path,
    plan: ServingPlan,
    service: str,
    label_table: Path,
    label: str,
    window: tuple[datetime | None, datetime | None],
    progress: Progress | None = None,
) -> TrainingSet:
    labels = load_labels(plan, service, label_table, label, window)
    return join_features(repo, plan, labels, progress)


def read_labels(
    path: Path,
    label: str,
    inputs: tuple[Column, ...],
    window: tuple[datetime | None, datetime | None],
) -> pd.DataFrame:
    """The label rows in [start, end), sorted by time, with only the columns Feast needs."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"cannot read label table {path}: {exc}") from exc
    wanted = [TIMESTAMP, label, *(c.name for c in inputs)]
    missing = [name for name in wanted if name not in schema.names]
    if missing:
        raise DataError(f"label table {path} has no column {', '.join(map(repr, missing))}")
    for column in inputs:
        _check_type(path, column, schema.field(column.name).type)
    if not pa.types.is_timestamp(schema.field(TIMESTAMP).type):
        raise DataError(f"label table {path}: {TIMESTAMP!r} is not a timestamp column")
    frame = pq.read_table(path, columns=wanted).to_pandas()
    if frame[TIMESTAMP].dt.tz is None:
        frame[TIMESTAMP] = frame[TIMESTAMP].dt.tz_localize("UTC")  # naive means UTC, as Feast
    start, end = window
    keep = frame[label].notna() & frame[TIMESTAMP].notna()
    if start is not None:
        keep &= frame[TIMESTAMP] >= start
    if end is not None:
        keep &= frame[TIMESTAMP] < end
    if not keep.any():
        raise DataError(
            f"label table {path} has no labelled rows in the window "
            f"[{start or 'beginning'}, {end or 'end'}) "
            f"(it spans {frame[TIMESTAMP].min()} .. {frame[TIMESTAMP].max()})"
        )
    selected = frame[keep].sort_values(TIMESTAMP, kind="stable")
    return selected.reset_index(drop=True)


def _check_type(path: Path, column: Column, arrow_type: pa.DataType) -> None:
    if column.dtype.startswith(("Int", "Float")):
        ok = pa.types.is_integer(arrow_type) or (
            column.dtype.startswith("Float") and pa.types.is_floating(arrow_type)
        )
    elif column.dtype == "String":
        ok = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    else:
        ok = True
    if not ok:
        raise DataError(
            f"label table {path}: column {column.name!r} is {arrow_type}, "
            f"the feature repo declares {column.dtype}"
        )


def fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 of column names and values: the same rows and features give the same hash."""
    digest = hashlib.sha256("\x1f".join(frame.columns).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()
