"""`carrara materialize --engine ray`: the local engine's steps, spread over a Ray cluster.

Concern: the same Redis bytes as the local engine (serving/batch/materialize.py), by running
the local engine's own functions in Ray tasks, in three stages per view:

1. scan (a task per Parquet file, i.e. per partition): the first pass of parquet_source.py
   (`latest_keys`: join keys, timestamps, positions) over that file alone, its rows then
   split by a hash of the join keys into one share per key bucket (the shuffle);
2. reduce (a task per bucket): the shares of every file, concatenated in file order, reduced
   again to the latest row per entity (`reduce_latest`: the earlier file wins a tie, as in one
   local pass), then preflight's `check_rows` over them. What a bucket found stays in the
   object store: the driver holds references, never rows;
3. write (a task per bucket, once every view of the run passed stages 1-2): `write_view` of
   the local engine over the bucket's rows, so each task writes its own share of keys with
   the guarded script.

Invariants: schemas of every file are checked on the driver before any task runs (a
partition that disagrees is a DataError naming the file and the column); a task Ray retries
(a worker lost) rewrites its bucket, which the guard makes harmless (equal timestamps are
skipped); the run's intervals are recorded by the caller only after every bucket of every
view is written, so a run that fails anywhere records nothing. Memory per task: one file's
per-entity rows (scan), one bucket's positions (reduce), streamed row groups (write).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pyarrow as pa

from serving.batch.materialize import PreparedView, ViewReport, ViewWindow, write_view
from serving.batch.parquet_source import (
    NO_ROWS,
    Latest,
    SourceColumns,
    check_source,
    concat_keys,
    latest_keys,
    positions,
    reduce_latest,
    source_files,
    total_rows,
)
from serving.batch.preflight import check_rows
from serving.batch.ray_engine.session import Cluster, connect
from serving.batch.ray_engine.tracking import PartDone, StageTimes, follow
from serving.repo.plan import FeatureViewPlan, ServingPlan
from serving.store.online_store import OnlineStore
from serving.store.settings import RedisSettings

TASK_RETRIES = 3  # a task whose worker died runs again: scans and reduces are pure, writes guarded


@dataclass(frozen=True)
class RayPreparedView:
    """A view checked on the cluster: per key bucket, a reference to its rows' positions."""

    window: ViewWindow
    files: list[str]
    buckets: list[Any]  # ObjectRef of each bucket's `Latest.where`
    entity_rows: int
    rows_scanned: int
    started: float


@dataclass
class RayMaterializer:
    """A MaterializeEngine (serving/batch/materialize.py) running on the cluster at `address`."""

    address: str | None
    buckets: int | None = None  # key buckets per view; None: the cluster's CPUs
    stages: StageTimes = field(default_factory=StageTimes)

    def connect(self) -> Cluster:
        with self.stages.stage("connect"):
            return connect(self.address)

    def prepare(self, window: ViewWindow, repo: Path, plan: ServingPlan) -> RayPreparedView:
        cluster = self.connect()
        ray, address = cluster.ray, cluster.address
        started = time.perf_counter()
        view = window.view
        with self.stages.stage("check schemas"):
            files = source_files(view, repo.resolve())  # workers have cwds of their own
            check_source(view, files)  # every partition's schema, before any task
        buckets = self.buckets or cluster.cpus
        scan = ray.remote(_scan).options(num_returns=buckets + 1, max_retries=TASK_RETRIES)
        with self.stages.stage("scan + shuffle"):
            shares = [
                scan.remote(view, files[i], i, window.start, window.end, buckets)
                for i in range(len(files))
            ]
            scanned = follow(
                ray,
                [s[0] for s in shares],
                f"{view.name} scan",
                total_rows(files),
                address,
                self.stages,
            )
        reduce = ray.remote(_reduce).options(num_returns=2, max_retries=TASK_RETRIES)
        with self.stages.stage("reduce + check"):
            reduced = [
                reduce.remote(
                    view,
                    files,
                    plan.project,
                    plan.entity_key_serialization_version,
                    b,
                    *[s[1 + b] for s in shares],
                )
                for b in range(buckets)
            ]
            counts = follow(
                ray, [r[0] for r in reduced], f"{view.name} reduce", None, address, self.stages
            )
        return RayPreparedView(
            window=window,
            files=files,
            buckets=[r[1] for r in reduced],
            entity_rows=sum(c.rows for c in counts),
            rows_scanned=sum(s.rows for s in scanned),
            started=started,
        )

    def write(self, store: OnlineStore, prepared: Any, plan: ServingPlan) -> ViewReport:
        cluster = self.connect()
        ray, window = cluster.ray, prepared.window
        task = ray.remote(_write).options(max_retries=TASK_RETRIES)
        settings = store.settings
        with self.stages.stage("write"):
            refs = [
                task.remote(settings, plan, window, prepared.files, where, b)
                for b, where in enumerate(prepared.buckets)
            ]
            label = f"{window.view.name} write"
            done = follow(ray, refs, label, prepared.entity_rows, cluster.address, self.stages)
        written = sum(d.written for d in done if isinstance(d, BucketWritten))
        view = window.view
        return ViewReport(
            view=view.name,
            start=window.start,
            end=window.end,
            rows_scanned=prepared.rows_scanned,
            entity_rows=prepared.entity_rows,
            written=written,
            skipped=prepared.entity_rows - written,
            values=written * len(view.features),
            elapsed_s=time.perf_counter() - prepared.started,
        )


@dataclass(frozen=True)
class BucketWritten(PartDone):
    written: int = 0  # rows newer than stored; the others were skipped by the guard


def _scan(
    view: FeatureViewPlan, path: str, index: int, start: Any, end: Any, buckets: int
) -> tuple[Any, ...]:
    """Stage 1, one file: its latest row per entity, split by key bucket; (PartDone, shares)."""
    started = time.perf_counter()
    columns = SourceColumns.of(view)
    scanned = 0

    def count(rows: int) -> None:
        nonlocal scanned
        scanned += rows

    keys = latest_keys(columns, [path], start, end, count, first_file=index)
    bucket = key_buckets(keys, list(columns.join_keys), buckets)
    shares = [keys.filter(pa.array(bucket == b)) for b in range(buckets)]
    return (PartDone(path, scanned, time.perf_counter() - started), *shares)


def key_buckets(keys: pa.Table, names: list[str], buckets: int) -> np.ndarray:
    """Each row's bucket, from a hash of its join keys that every process computes alike
    (pandas' hash_array has a fixed key; Python's hash of a str does not)."""
    hashed = np.zeros(keys.num_rows, np.uint64)
    for name in names:
        column = keys[name]
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if pa.types.is_integer(column.type):  # int32 in one file, int64 in another: one hash
            column = column.cast(pa.int64())
        values = column.to_numpy(zero_copy_only=False)
        hashed = hashed * np.uint64(1_000_003) + pd.util.hash_array(values)
    return (hashed % np.uint64(buckets)).astype(np.int64)


def _reduce(
    view: FeatureViewPlan,
    files: list[str],
    project: str,
    key_version: int,
    bucket: int,
    *shares: pa.Table,
) -> tuple[PartDone, pa.Table]:
    """Stage 2, one bucket: its latest row per entity across files, checked as preflight does."""
    started = time.perf_counter()
    columns = SourceColumns.of(view)
    found = [s for s in shares if s.num_rows]  # an empty share may carry other key types
    where = positions(reduce_latest(concat_keys(found), columns)) if found else NO_ROWS
    check_rows(view, Latest(columns, files, where), project, key_version)
    return PartDone(f"bucket {bucket}", where.num_rows, time.perf_counter() - started), where


def _write(
    settings: RedisSettings,
    plan: ServingPlan,
    window: ViewWindow,
    files: list[str],
    where: pa.Table,
    bucket: int,
) -> PartDone:
    """Stage 3, one bucket: the local engine's write of its rows, through the guard."""
    started = time.perf_counter()
    latest = Latest(SourceColumns.of(window.view), files, where)
    store = OnlineStore(settings, plan.project)
    try:
        report = write_view(store, PreparedView(window, latest, 0, started), plan)
    finally:
        store.close()
    rows = report.written + report.skipped
    return BucketWritten(f"bucket {bucket}", rows, report.elapsed_s, written=report.written)
