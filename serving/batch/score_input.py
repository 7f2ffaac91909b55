"""Batch scoring input: a Parquet file of entity rows, checked and read in chunks.

Concern: what each row of a `carrara score` input must carry (the model's entities, i.e. its
join keys, its request fields, and, for point-in-time scoring, an event timestamp) and the one
clear error when it does not, naming the file, the column and, for a bad value, the first
offending row (0-based, counted in file order across chunks).

Invariants: the schema is checked before any row is read (so before any output exists);
values (nulls, non-finite request numbers) are checked chunk by chunk as they stream.
Columns become numpy arrays of the types the server gives a request's columns
(serving/online/wire.py): Int* -> int64, Float* -> float64, String -> object arrays of str,
Bool -> bool; event times -> int64 ns since the epoch, UTC (naive timestamps are UTC, as in
Feast).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from serving.batch.point_in_time import timestamp_ns
from serving.errors import DataError
from serving.repo.plan import Column

_T = pa.types
_ACCEPTS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "Int64": (_T.is_integer, "an integer"),
    "Int32": (_T.is_integer, "an integer"),
    "UnixTimestamp": (_T.is_integer, "an integer"),
    "Float64": (lambda t: _T.is_floating(t) or _T.is_integer(t), "a number"),
    "Float32": (lambda t: _T.is_floating(t) or _T.is_integer(t), "a number"),
    "String": (lambda t: _T.is_string(t) or _T.is_large_string(t), "a string"),
    "Bool": (_T.is_boolean, "a boolean"),
}


@dataclass(frozen=True)
class InputSpec:
    path: Path
    entities: tuple[Column, ...]
    request_fields: tuple[Column, ...]
    timestamp: str | None  # the event-time column; None when scoring as of now


@dataclass(frozen=True)
class InputChunk:
    first_row: int  # of the file
    batch: pa.RecordBatch  # as read: every input column, passed on to the output
    entities: dict[str, np.ndarray]
    request_data: dict[str, np.ndarray]
    at_ns: np.ndarray | None  # int64 ns since the epoch, UTC; None when scoring as of now

    @property
    def rows(self) -> int:
        return int(self.batch.num_rows)


def open_input(spec: InputSpec) -> Any:
    """The input as a pyarrow ParquetFile whose schema carries what the model needs."""
    try:
        parquet = pq.ParquetFile(spec.path)
    except FileNotFoundError:
        raise DataError(f"input {spec.path} does not exist") from None
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"input {spec.path} is not a readable Parquet file: {exc}") from exc
    check_schema(parquet.schema_arrow, spec)
    return parquet


def check_schema(schema: pa.Schema, spec: InputSpec) -> None:
    columns = [*spec.entities, *spec.request_fields]
    wanted = [c.name for c in columns] + ([spec.timestamp] if spec.timestamp else [])
    missing = [name for name in wanted if name not in schema.names]
    if missing:
        raise DataError(
            f"input {spec.path} has no column {', '.join(map(repr, missing))} "
            f"(the model needs {', '.join(wanted)})"
        )
    for column in columns:
        arrow_type = schema.field(column.name).type
        accepts, kind = _ACCEPTS.get(column.dtype, (lambda _t: False, column.dtype))
        if not accepts(arrow_type):
            role = "entity key" if column in spec.entities else "request field"
            raise DataError(
                f"input {spec.path}: column {column.name!r} is {arrow_type}, but the model's "
                f"{role} {column.name!r} is {column.dtype} (expected {kind} column)"
            )
    if spec.timestamp and not _T.is_timestamp(schema.field(spec.timestamp).type):
        raise DataError(
            f"input {spec.path}: column {spec.timestamp!r} is "
            f"{schema.field(spec.timestamp).type}, expected a timestamp column"
        )


def read_chunks(parquet: Any, spec: InputSpec, chunk_rows: int) -> Iterator[InputChunk]:
    """The input in chunks of at most `chunk_rows`, checked and converted."""
    first = 0
    try:
        batches = parquet.iter_batches(batch_size=chunk_rows)
        for batch in batches:
            yield to_chunk(batch, spec, first)
            first += batch.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"input {spec.path}: cannot read rows after row {first}: {exc}") from exc


def to_chunk(batch: pa.RecordBatch, spec: InputSpec, first_row: int) -> InputChunk:
    def column(name: str, what: str) -> Any:
        values = batch.column(name)
        if values.null_count:
            row = first_row + int(np.flatnonzero(values.is_null().to_numpy(False))[0])
            raise DataError(f"input {spec.path}: {what} {name!r} is null at row {row}")
        return values

    entities = {c.name: _numpy(column(c.name, "entity key"), c.dtype) for c in spec.entities}
    request = {
        c.name: _numpy(column(c.name, "request field"), c.dtype) for c in spec.request_fields
    }
    for c in spec.request_fields:
        values = request[c.name]
        if values.dtype == np.float64 and not np.isfinite(values).all():
            row = first_row + int(np.flatnonzero(~np.isfinite(values))[0])
            raise DataError(
                f"input {spec.path}: request field {c.name!r} is not a finite number at row {row}"
            )
    at_ns = timestamp_ns(column(spec.timestamp, "event timestamp")) if spec.timestamp else None
    return InputChunk(first_row, batch, entities, request, at_ns)


def _numpy(values: Any, dtype: str) -> np.ndarray:
    if dtype == "String":
        return np.array(values.to_pylist(), dtype=object)
    target = {"Float64": pa.float64(), "Float32": pa.float64(), "Bool": pa.bool_()}.get(
        dtype, pa.int64()
    )
    converted: np.ndarray = pc.cast(values, target).to_numpy(zero_copy_only=False)
    return converted
