"""The prediction log on disk: hourly-partitioned Parquet, written by the log's own thread.

Layout (hive partitions, read directly by pandas, pyarrow and DuckDB):

    DIR/model=eta/date=2026-12-02/hour=03/part-20261202T031500-<8 hex>.parquet

One row per scored row. Columns: request_id, row (its index in the request), time (UTC, µs),
version, alias, role, prediction, missing_features, degraded, latency_ms; then
`entity.<join key>` and `request.<field>` (the caller's values, typed as sent), and per model
feature `feature.<ref>` (float64, NaN = missing; a categorical one is its level's code) and
`status.<ref>` (PRESENT, MISSING or STALE as the read found it; an on-demand output is
PRESENT unless NaN). The model is the `model=` partition (a column of the same name in
the files would clash with it when a reader applies the hive partitioning).

Rows are buffered and written as a new, complete file every `flush_interval_s` or
`max_rows_per_file` rows, whichever comes first, through a hidden temporary name renamed
into place: a reader never sees half a file, a partial hour is readable while it fills, and
a crash loses at most the unflushed buffer. A write that fails (folder gone, disk full) drops
that buffer, counts its rows (`on_drop("write_failed", rows)`), and is logged once a minute;
serving goes on. Hour partitions older than `retention_hours` are deleted as files are written.

Imports pyarrow: only the server's composition root builds this, and only when a log is
asked for (`--prediction-log`); see the layer contracts in pyproject.toml.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from serving.errors import UsageError
from serving.monitoring.prediction_log import PredictionRecord

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 10.0
MAX_ROWS_PER_FILE = 50_000
RETENTION_CHECK_INTERVAL_S = 60.0
FAILURE_LOG_INTERVAL_S = 60.0
STATUS_LEVELS = pa.array(["MISSING", "PRESENT", "STALE"])  # codes: serving.store.reads.Status


@dataclass(frozen=True)
class LogSettings:
    root: Path
    retention_hours: float | None = None  # None: keep everything
    flush_interval_s: float = FLUSH_INTERVAL_S
    max_rows_per_file: int = MAX_ROWS_PER_FILE


def check_writable(root: Path) -> None:
    """Create `root` if need be and prove a file can be written there; UsageError if not."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(
            f"--prediction-log {root}: cannot write there ({exc.strerror or exc})"
        ) from None


def partition(model: str, time_s: float) -> Path:
    """model=<name>/date=<YYYY-MM-DD>/hour=<HH> of a record made at `time_s` (UTC)."""
    at = datetime.fromtimestamp(time_s, UTC)
    return Path(f"model={model}", f"date={at:%Y-%m-%d}", f"hour={at:%H}")


class ParquetLog:
    """A `RecordConsumer` writing the records to Parquet files under `settings.root`."""

    def __init__(
        self, settings: LogSettings, on_drop: Callable[[str, int], None] = lambda _r, _n: None
    ) -> None:
        check_writable(settings.root)
        self.settings = settings
        self._on_drop = on_drop
        self._buffer: list[PredictionRecord] = []
        self._rows = 0
        self._oldest = time.monotonic()
        self._retention_checked = -RETENTION_CHECK_INTERVAL_S
        self._failure_logged = -FAILURE_LOG_INTERVAL_S
        self.files_written = 0
        self.rows_written = 0

    def consume(self, records: Sequence[PredictionRecord]) -> None:
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer.extend(records)
        self._rows += sum(len(r.predictions) for r in records)
        due = time.monotonic() - self._oldest >= self.settings.flush_interval_s
        if self._rows >= self.settings.max_rows_per_file or (due and self._buffer):
            self.flush()

    def flush(self) -> None:
        records, self._buffer, rows, self._rows = self._buffer, [], self._rows, 0
        if records:
            try:
                for (folder, _version), group in _groups(records).items():
                    self._write(folder, group)
            except OSError as exc:
                self._failed(exc, rows)
        self._apply_retention()

    def close(self) -> None:
        self.flush()

    def _write(self, folder: Path, records: list[PredictionRecord]) -> None:
        target = self.settings.root / folder
        target.mkdir(parents=True, exist_ok=True)
        stamp = datetime.fromtimestamp(records[0].time_s, UTC)
        name = f"part-{stamp:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
        temporary = target / f".{name}.tmp"  # hidden: readers of the folder skip it
        try:
            pq.write_table(log_table(records), temporary)
            os.replace(temporary, target / name)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self.files_written += 1
        self.rows_written += sum(len(r.predictions) for r in records)

    def _failed(self, exc: OSError, rows: int) -> None:
        self._on_drop("write_failed", rows)
        now = time.monotonic()
        if now - self._failure_logged >= FAILURE_LOG_INTERVAL_S:
            self._failure_logged = now
            log.error(
                "prediction log: cannot write under %s (%s); %d rows dropped, serving goes on "
                "(logged at most once a minute; carrara_prediction_log_dropped_total counts)",
                *(self.settings.root, exc.strerror or exc, rows),
            )

    def _apply_retention(self) -> None:
        hours = self.settings.retention_hours
        now = time.monotonic()
        if hours is None or now - self._retention_checked < RETENTION_CHECK_INTERVAL_S:
            return
        self._retention_checked = now
        expired = datetime.now(UTC) - timedelta(hours=hours)
        for folder, hour_start in hour_folders(self.settings.root):
            if hour_start + timedelta(hours=1) <= expired:
                shutil.rmtree(folder, ignore_errors=True)


def hour_folders(root: Path) -> Iterable[tuple[Path, datetime]]:
    """Every model=/date=/hour= folder under `root`, with the hour it holds."""
    for folder in root.glob("model=*/date=*/hour=*"):
        try:
            day = folder.parent.name.removeprefix("date=")
            hour = int(folder.name.removeprefix("hour="))
            yield folder, datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)
        except ValueError:
            continue  # not ours: left alone


def _groups(records: Sequence[PredictionRecord]) -> dict[tuple[Path, str], list[PredictionRecord]]:
    """Records by the folder they belong in and their version: a file each (one schema)."""
    groups: dict[tuple[Path, str], list[PredictionRecord]] = {}
    for record in records:
        key = (partition(record.model, record.time_s), record.version)
        groups.setdefault(key, []).append(record)
    return groups


def log_table(records: Sequence[PredictionRecord]) -> pa.Table:
    """One row per scored row of `records` (one model version: they share their columns)."""
    first = records[0]
    rows = np.array([len(r.predictions) for r in records])
    repeat = np.repeat
    columns: dict[str, Any] = {
        "request_id": pa.array(repeat([r.request_id for r in records], rows), pa.string()),
        "row": pa.array(np.concatenate([np.arange(n, dtype=np.int32) for n in rows])),
        "time": pa.array(
            repeat([int(r.time_s * 1e6) for r in records], rows), pa.timestamp("us", tz="UTC")
        ),
        "version": pa.array(repeat([r.version for r in records], rows), pa.string()),
        "alias": pa.array(repeat([r.alias for r in records], rows), pa.string()),
        "role": pa.array(repeat([r.role for r in records], rows), pa.string()),
        "prediction": pa.array(np.concatenate([r.predictions for r in records]), pa.float64()),
        "missing_features": pa.array(np.concatenate([r.missing for r in records]).astype(np.int32)),
        "degraded": pa.array(repeat([r.degraded for r in records], rows), pa.bool_()),
        "latency_ms": pa.array(repeat([r.latency_ms for r in records], rows), pa.float64()),
    }
    for section, prefix in (("entities", "entity"), ("request_data", "request")):
        for name in getattr(first, section):
            columns[f"{prefix}.{name}"] = pa.array(
                [v for r in records for v in getattr(r, section)[name]]
            )
    matrix = np.vstack([r.features for r in records])
    codes = np.vstack([_status_codes(r) for r in records])
    for i, ref in enumerate(first.feature_names):
        columns[f"feature.{ref}"] = pa.array(matrix[:, i], pa.float64())
        columns[f"status.{ref}"] = pa.DictionaryArray.from_arrays(
            pa.array(codes[:, i]), STATUS_LEVELS
        )
    return pa.table(columns)


def _status_codes(record: PredictionRecord) -> np.ndarray:
    """Per row and feature: the read's status; a value the read did not give (an on-demand
    output) is PRESENT unless NaN."""
    computed: np.ndarray = (~np.isnan(record.features)).astype(np.int8)
    if record.status is None:
        return computed
    status = record.status.astype(np.int8)
    codes: np.ndarray = np.where((status == 0) & (computed == 1), 1, status).astype(np.int8)
    return codes
