"""Online/offline consistency: the server's feature vectors against point-in-time ones.

Concern: `carrara check-consistency`. For N entity rows sampled from a Parquet file (by
default the model's training label table), ask a running prediction server for its vector
and prediction (gRPC Predict with `return_features`), compute the offline vector and
prediction of the same model version at the same time (offline_model.py: Feast's
point-in-time semantics over the views' batch sources, the server's on-demand functions and
scorer), and report every feature that differs, per row: entity keys, online, offline.

Invariants:
- Reads only: it materializes nothing and writes nothing.
- The same version on both sides: the offline model is the version the server replied with.
- Exact equality, NaN (missing) equal to NaN; Float32 features compare as float32, the
  precision the online store keeps. Predictions compare exactly.
- Except a windowed view's float outputs (sum, mean, min, max over events of a float column,
  serving/repo/windows.py): online sums tile by tile in the order events arrived, offline
  pairwise over the window, so they agree up to summation order: a relative tolerance of 1e-9
  (Float32 outputs: one float32 step, 2**-23, as both round a near-equal double). Integer
  outputs (counts, integer sums, min and max) still compare exactly.
- Time: the offline vector is computed as of the moment the request was sent and as of the
  moment the reply came back; a value differs only when it differs from both, so a ttl
  boundary crossed during the round trip is not reported as skew.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from serving.batch.offline_model import OfflineModel, WindowJoin, build_offline_model
from serving.batch.score_input import InputChunk, InputSpec, check_schema, to_chunk
from serving.errors import CarraraError, DataError, ModelError, NotFoundError, UsageError
from serving.models.registry import ModelRegistry
from serving.repo.compile import ensure_plan
from serving.repo.plan import ServingPlan

if TYPE_CHECKING:
    from serving.client import ClientCredentials

PREDICTION = "prediction"


@dataclass(frozen=True)
class ConsistencyRequest:
    repo: Path
    registry: Path
    model: str  # as the server resolves it: "eta", "eta@staging", "eta:3"
    target: str  # host:port of the running server
    sample: int
    input: Path | None = None  # None: the model's training label table
    seed: int = 0
    batch_rows: int = 50  # rows per Predict call (at most the server's max_rows)
    timeout_s: float = 10.0
    credentials: ClientCredentials | None = None  # TLS and token: None for a plain server


@dataclass(frozen=True)
class Difference:
    row: int  # of the sample
    keys: str  # "driver_id=17, pickup_zone_id=3, ..."
    feature: str  # a feature ref, or "prediction"
    online: float
    offline: float  # as of the moment the request was sent


@dataclass(frozen=True)
class ConsistencyReport:
    model: str
    version: str
    target: str
    rows: int
    features: int
    input: Path
    differences: tuple[Difference, ...]

    @property
    def consistent(self) -> bool:
        return not self.differences

    def counts(self) -> dict[str, int]:
        """Differing rows per feature (and prediction), most first."""
        counts: dict[str, int] = {}
        for difference in self.differences:
            counts[difference.feature] = counts.get(difference.feature, 0) + 1
        return dict(sorted(counts.items(), key=lambda item: -item[1]))


def check_consistency(request: ConsistencyRequest) -> ConsistencyReport:
    from serving.client import PredictionClient

    if request.sample < 1:
        raise UsageError("--sample must be at least 1")
    plan = ensure_plan(request.repo)
    registry = ModelRegistry(request.registry)
    card = registry.card(request.model)
    path = request.input or _label_table(request.repo, card.name)
    spec = InputSpec(path, card.entities, card.request_fields, timestamp=None)
    sample = _sample(spec, request.sample, request.seed)
    differences: list[Difference] = []
    model: OfflineModel | None = None
    with PredictionClient(request.target, request.timeout_s, request.credentials) as client:
        for first in range(0, sample.num_rows, request.batch_rows):
            batch = sample.slice(first, request.batch_rows).combine_chunks().to_batches()[0]
            chunk = to_chunk(batch, spec, first)
            sent_ns = time.time_ns()
            reply = _predict(client, request, chunk)
            back_ns = time.time_ns()
            if model is None:
                model = _offline_model(registry, plan, request.repo, card.name, reply)
            differences += _compare(model, chunk, reply, (sent_ns, back_ns))
    return ConsistencyReport(
        model=card.name,
        version=model.version if model else "",
        target=request.target,
        rows=sample.num_rows,
        features=len(model.feature_names) if model else 0,
        input=path,
        differences=tuple(differences),
    )


def _label_table(repo: Path, name: str) -> Path:
    from serving.repo.model_kinds import model_kinds

    try:
        kind = model_kinds(repo).get(name)
    except UsageError:
        kind = None
    if kind is None:
        raise UsageError(f"model {name!r} is no model kind of {repo}: give --input")
    return repo / kind.label_table


def _sample(spec: InputSpec, rows: int, seed: int) -> pa.Table:
    """`rows` input rows drawn at random without replacement (all when there are fewer)."""
    try:
        schema = pq.read_schema(spec.path)
    except FileNotFoundError:
        raise DataError(f"input {spec.path} does not exist") from None
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"input {spec.path} is not a readable Parquet file: {exc}") from exc
    check_schema(schema, spec)
    names = [c.name for c in (*spec.entities, *spec.request_fields)]
    table = pq.read_table(spec.path, columns=names)
    if table.num_rows > rows:
        picked = np.sort(np.random.default_rng(seed).choice(table.num_rows, rows, replace=False))
        table = table.take(pa.array(picked))
    return table


def _predict(client: Any, request: ConsistencyRequest, chunk: InputChunk) -> Any:
    import grpc

    try:
        return client.predict(
            request.model,
            {k: v.tolist() for k, v in chunk.entities.items()},
            {k: v.tolist() for k, v in chunk.request_data.items()},
            return_features=True,
        )
    except grpc.RpcError as exc:
        code = exc.code()
        message = f"{code.name} from the server at {request.target}: {exc.details()}"
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise UsageError(message) from None  # the caller's credentials: exit 2
        raise (NotFoundError if code == grpc.StatusCode.NOT_FOUND else CarraraError)(
            message
        ) from None


def _offline_model(
    registry: ModelRegistry, plan: ServingPlan, repo: Path, name: str, reply: Any
) -> OfflineModel:
    """The version the server used, built for offline scoring; its inputs must match."""
    loaded = registry.load(f"{name}:{reply.model_version}", plan)
    if tuple(reply.feature_names) != loaded.card.feature_refs:
        raise ModelError(
            f"the server's {name}:{reply.model_version} has features "
            f"{list(reply.feature_names)}; registry {registry.root} lists "
            f"{list(loaded.card.feature_refs)}: not the same model"
        )
    return build_offline_model(loaded, plan, repo)


def _compare(
    model: OfflineModel, chunk: InputChunk, reply: Any, times_ns: tuple[int, int]
) -> list[Difference]:
    online = np.array([list(row.values) for row in reply.features], dtype=np.float64)
    online = online.reshape(chunk.rows, len(model.feature_names))
    online_pred = np.array(reply.predictions, dtype=np.float64)
    at_ends = [
        model.predict(chunk.entities, chunk.request_data, np.full(chunk.rows, t), chunk.rows)
        for t in times_ns
    ]
    float32 = np.array([model.card.feature_types[r] == "Float32" for r in model.feature_names])
    tolerance = window_tolerance(model)
    differs = np.logical_and.reduce(
        [~_equal(online, end.features, float32, tolerance) for end in at_ends]
    )
    pred_differs = np.logical_and.reduce(
        [~_equal(online_pred, end.predictions, np.bool_(False)) for end in at_ends]
    )
    sent = at_ends[0]
    out = []
    for row in np.flatnonzero(differs.any(axis=1) | pred_differs):
        keys = _keys(chunk.entities, int(row))
        for j in np.flatnonzero(differs[row]):
            name = model.feature_names[j]
            out.append(
                Difference(
                    chunk.first_row + int(row),
                    keys,
                    name,
                    float(online[row, j]),
                    float(sent.features[row, j]),
                )
            )
        if pred_differs[row]:
            out.append(
                Difference(
                    chunk.first_row + int(row),
                    keys,
                    PREDICTION,
                    float(online_pred[row]),
                    float(sent.predictions[row]),
                )
            )
    return out


WINDOW_RTOL = 1e-9
WINDOW_RTOL_FLOAT32 = 2.0**-23


def window_tolerance(model: OfflineModel) -> np.ndarray:
    """The relative tolerance of each model input: 0 (exact) but for a windowed float output."""
    tolerance = np.zeros(len(model.feature_names))
    for join in model.joins:
        if isinstance(join, WindowJoin):
            for position, dtype in zip(join.positions, join.dtypes, strict=True):
                if dtype == "Float64":
                    tolerance[position] = WINDOW_RTOL
                elif dtype == "Float32":
                    tolerance[position] = WINDOW_RTOL_FLOAT32
    return tolerance


def _equal(
    a: np.ndarray,
    b: np.ndarray,
    as_float32: np.ndarray | np.bool_,
    rtol: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Elementwise equality, NaN equal to NaN; columns flagged in `as_float32` as float32;
    within `rtol` (relative, per column) where it is not 0."""
    with np.errstate(over="ignore"):  # only flagged columns are kept, and they fit
        a = np.where(as_float32, a.astype(np.float32).astype(np.float64), a)
        b = np.where(as_float32, b.astype(np.float32).astype(np.float64), b)
    with np.errstate(invalid="ignore"):  # inf - inf: not close, unless equal
        close = np.abs(a - b) <= rtol * np.maximum(np.abs(a), np.abs(b))
    equal: np.ndarray = (a == b) | (np.isnan(a) & np.isnan(b)) | close
    return equal


def _keys(entities: Mapping[str, np.ndarray], row: int) -> str:
    return ", ".join(f"{name}={values[row]!s}" for name, values in entities.items())


def describe(report: ConsistencyReport, limit: int = 200) -> list[str]:
    """The report as lines: a summary, then each difference (the first `limit`)."""
    head = (
        f"{report.model}:{report.version} at {report.target}, {report.rows:,} rows sampled "
        f"from {report.input}, {report.features} features each"
    )
    if report.consistent:
        return [f"{head}: online and offline agree exactly"]
    rows = len({d.row for d in report.differences})
    per_feature = ", ".join(f"{name} {n}" for name, n in report.counts().items())
    lines = [f"{head}: {len(report.differences):,} differences in {rows:,} rows ({per_feature})"]
    for d in report.differences[:limit]:
        lines.append(
            f"  row {d.row} ({d.keys}): {d.feature}: online {d.online!r}, offline {d.offline!r}"
        )
    if len(report.differences) > limit:
        lines.append(f"  ... and {len(report.differences) - limit:,} more")
    return lines
