"""Batch scoring: Parquet in -> features -> the server's scorer -> Parquet out.

Concern: `carrara score`. Each input row carries its entity keys, request data and an event
timestamp; its features are joined point in time from the offline store (offline_model.py:
as of its own time, the views' ttl respected, Feast's semantics) or, with `online=True`, read
"as of now" from Redis through the server's own `ServedModel.predict`. The output is the input
columns plus `prediction`, `model_version` and `missing_features`.

Invariants:
- Bounded memory: the input streams in chunks (`ParquetFile.iter_batches`) and the output is
  written chunk by chunk (`ParquetWriter`); at most three chunks are alive at once (one read
  ahead, one scored, one being written), plus the input row group being decoded (Parquet's
  unit of reading). The feature tables are held whole.
- Overlapped: the next chunk is read and checked and the previous one written on a helper
  thread while the current one is scored; LightGBM scores on every core.
- The output is never half-written: it is written to a hidden temporary file beside it and
  renamed at the end; on any error the temporary file is removed and nothing is left.
- Everything that can be refused (unknown model, missing or mistyped column, output columns
  clashing) is refused before the output file is created.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from serving.batch.score_input import InputChunk, InputSpec, open_input, read_chunks
from serving.errors import DataError, UsageError
from serving.files import replacing
from serving.inference.served_model import Prediction
from serving.models.registry import LoadedModel, ModelRegistry
from serving.progress import Progress
from serving.repo.compile import ensure_plan
from serving.repo.plan import ServingPlan

PREDICTION, MODEL_VERSION, MISSING = "prediction", "model_version", "missing_features"
OUTPUT_FIELDS = (
    pa.field(PREDICTION, pa.float64()),
    pa.field(MODEL_VERSION, pa.string()),
    pa.field(MISSING, pa.int32()),
)
CHUNK_ROWS = 65_536
ONLINE_CHUNK_ROWS = 8_192  # rows per Redis pipeline in --online mode
ONLINE_TIMEOUT_S = 60.0
TIMESTAMP = "event_timestamp"

ScoreChunk = Callable[[InputChunk], Prediction]


@dataclass(frozen=True)
class ScoreRequest:
    repo: Path
    registry: Path
    model: str  # "eta", "eta@staging", "eta:3"
    input: Path
    output: Path
    online: bool = False
    redis_url: str | None = None
    timestamp_column: str = TIMESTAMP
    chunk_rows: int | None = None  # None: CHUNK_ROWS, or ONLINE_CHUNK_ROWS online
    threads: int | None = None  # LightGBM threads; None: every core


@dataclass(frozen=True)
class ScoreReport:
    model: str
    version: str
    rows: int
    rows_with_missing: int
    elapsed_s: float
    output: Path

    @property
    def rows_per_s(self) -> float:
        return self.rows / max(self.elapsed_s, 1e-9)


def score_file(request: ScoreRequest) -> ScoreReport:
    started = time.perf_counter()
    plan = ensure_plan(request.repo)
    loaded = ModelRegistry(request.registry).load(request.model, plan)
    spec = InputSpec(
        path=request.input,
        entities=loaded.card.entities,
        request_fields=loaded.card.request_fields,
        timestamp=None if request.online else request.timestamp_column,
    )
    parquet = open_input(spec)
    schema = output_schema(parquet.schema_arrow, request.input)
    if not request.output.parent.is_dir():
        raise UsageError(f"output folder {request.output.parent} does not exist")
    chunk_rows = request.chunk_rows or (ONLINE_CHUNK_ROWS if request.online else CHUNK_ROWS)
    version = str(loaded.version)
    with contextlib.ExitStack() as resources:
        score = build_scorer(request, plan, loaded, resources)
        tmp = resources.enter_context(replacing(request.output))
        writer = resources.enter_context(pq.ParquetWriter(tmp, schema))
        chunks = read_chunks(parquet, spec, chunk_rows)
        label = f"score {loaded.name}:{version}"
        with Progress(label, total=parquet.metadata.num_rows) as bar:
            rows, missing = score_chunks(chunks, score, version, schema, writer, bar)
    return ScoreReport(
        model=loaded.name,
        version=version,
        rows=rows,
        rows_with_missing=missing,
        elapsed_s=time.perf_counter() - started,
        output=request.output,
    )


def build_scorer(
    request: ScoreRequest, plan: ServingPlan, loaded: LoadedModel, resources: contextlib.ExitStack
) -> ScoreChunk:
    """A function scoring one chunk: point in time offline, or the server's path online."""
    threads = request.threads or os.cpu_count() or 1
    if not request.online:
        from serving.batch.offline_model import build_offline_model

        model = build_offline_model(loaded, plan, request.repo, num_threads=threads)

        def offline(chunk: InputChunk) -> Prediction:
            if chunk.at_ns is None:
                raise UsageError("point-in-time scoring needs an event timestamp column")
            return model.predict(chunk.entities, chunk.request_data, chunk.at_ns, chunk.rows)

        return offline
    from serving.inference.served_model import NoObserver, build_served_model
    from serving.store.online_store import OnlineStore
    from serving.store.settings import redis_settings

    store = OnlineStore(redis_settings(request.repo, request.redis_url), plan.project)
    resources.callback(store.close)
    served = build_served_model(loaded, plan, request.repo, store, NoObserver(), threads)

    def online(chunk: InputChunk) -> Prediction:
        return served.predict(chunk.entities, chunk.request_data, chunk.rows, ONLINE_TIMEOUT_S)

    return online


def score_chunks(
    chunks: Iterator[InputChunk],
    score: ScoreChunk,
    version: str,
    schema: pa.Schema,
    writer: Any,
    bar: Progress,
) -> tuple[int, int]:
    """Score chunk i while chunk i+1 is read and chunk i-1 written; (rows, rows missing any)."""
    rows = missing = 0
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="carrara-score") as pool:
        reading: Future[InputChunk | None] = pool.submit(next, chunks, None)
        writing: Future[None] | None = None
        while (chunk := reading.result()) is not None:
            reading = pool.submit(next, chunks, None)
            result = score(chunk)
            batch = output_batch(chunk, result, version, schema)
            if writing is not None:
                writing.result()
            writing = pool.submit(writer.write_batch, batch)
            rows += chunk.rows
            missing += int((result.missing_per_row > 0).sum())
            bar.advance(chunk.rows, f"{missing:,} rows missing features")
        if writing is not None:
            writing.result()
    return rows, missing


def output_batch(
    chunk: InputChunk, result: Prediction, version: str, schema: pa.Schema
) -> pa.RecordBatch:
    extra = [
        pa.array(result.predictions, pa.float64()),
        pa.repeat(pa.scalar(version, pa.string()), chunk.rows),
        pa.array(result.missing_per_row, pa.int32()),
    ]
    return pa.RecordBatch.from_arrays([*chunk.batch.columns, *extra], schema=schema)


def output_schema(input_schema: pa.Schema, path: Path) -> pa.Schema:
    clash = [f.name for f in OUTPUT_FIELDS if f.name in input_schema.names]
    if clash:
        raise DataError(
            f"input {path} already has a column {', '.join(map(repr, clash))}; "
            "the output adds it: rename or drop it"
        )
    schema = input_schema.remove_metadata()
    for field in OUTPUT_FIELDS:
        schema = schema.append(field)
    return schema
