"""Materialize: Parquet batch sources -> latest row per entity -> Feast's bytes -> Redis.

Concern: `carrara materialize` on any Feast repo whose batch sources are Parquet files and
whose online store is Redis, with the same result as `feast materialize`.

Invariants:
- Reads the serving plan only: no `import feast` on this path while the plan is current
  (`ensure_plan` compiles a missing or stale one once, through Feast).
- Window [start, end], both ends included; per entity the latest row (event, then created
  timestamp), as Feast selects (parquet_source.py).
- Bytes are Feast's (serving/store/encoding.py); a row is written only when newer than the
  stored `_ts:<view>`, atomically (serving/store/writes.py); key_ttl_seconds applies to
  written rows only.
- After each view is written, its interval is recorded in Feast's registry
  (serving/repo/feast_registry.py) and the plan's registry fingerprint follows, so the plan
  stays current. Incremental runs resume from the latest recorded end, exactly as
  `feast materialize-incremental` does.
- Re-running an interrupted run reaches the same Redis state as an uninterrupted one: batches
  are atomic, equal timestamps are skipped and the same rows are selected again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from serving.batch.parquet_source import (
    EVENT_TS,
    Latest,
    latest_per_entity,
    source_files,
    total_rows,
)
from serving.errors import DataError, UsageError
from serving.progress import Progress
from serving.repo.compile import ensure_plan
from serving.repo.feast_registry import materialized_until, read_registry, record_materialization
from serving.repo.plan import FeatureViewPlan, RepoFiles, ServingPlan, save_plan
from serving.store import codec, encoding
from serving.store.online_store import OnlineStore
from serving.store.presence import Absence, absent_views
from serving.store.settings import redis_settings
from serving.store.write_guard import FramedRows, framed_batches

ENCODE_ROWS = 16_384  # rows encoded at once (numpy-vectorised)
WRITE_ROWS = 1_000  # rows per atomic script call: Redis serves nothing else while it runs
NO_TTL_LOOKBACK = timedelta(weeks=52)  # Feast's incremental start for a view without ttl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewWindow:
    view: FeatureViewPlan
    start: datetime
    end: datetime


@dataclass(frozen=True)
class ViewReport:
    view: str
    start: datetime
    end: datetime
    rows_scanned: int
    entity_rows: int
    written: int
    skipped: int
    values: int  # feature values written
    elapsed_s: float


@dataclass(frozen=True)
class MaterializeReport:
    views: tuple[ViewReport, ...]
    elapsed_s: float
    # incremental runs: views that wrote nothing and that the store holds no key of (their
    # recorded interval says they are up to date, yet every read of them comes back missing)
    absent: tuple[Absence, ...] = ()

    @property
    def entity_rows(self) -> int:
        return sum(v.entity_rows for v in self.views)

    @property
    def written(self) -> int:
        return sum(v.written for v in self.views)

    @property
    def skipped(self) -> int:
        return sum(v.skipped for v in self.views)

    @property
    def values(self) -> int:
        return sum(v.values for v in self.views)


def materialize(
    repo: Path,
    start: datetime | None = None,
    end: datetime | None = None,
    incremental: bool = False,
    views: Sequence[str] | None = None,
    redis_url: str | None = None,
    on_view: Callable[[ViewReport], None] | None = None,
) -> MaterializeReport:
    """Materialize the repo's views into its Redis; `on_view` hears of each finished view."""
    started = time.perf_counter()
    plan = ensure_plan(repo)
    files = RepoFiles.locate(repo)
    settings = redis_settings(repo, redis_url)
    chosen = select_views(plan, views)
    now = datetime.now(UTC)
    if incremental:
        windows = incremental_windows(plan, files, chosen, end or now, now)
    else:
        windows = explicit_windows(chosen, start, end)
    store = OnlineStore(settings, plan.project)
    reports = []
    try:
        store.ping()
        for window in windows:
            report = materialize_view(store, window, files.repo, plan.project)
            plan = _record(files, plan, window)
            reports.append(report)
            if on_view:
                on_view(report)
        absent = _absent_after_nothing_written(store, windows, reports) if incremental else []
    finally:
        store.close()
    return MaterializeReport(tuple(reports), time.perf_counter() - started, tuple(absent))


def _absent_after_nothing_written(
    store: OnlineStore, windows: Sequence[ViewWindow], reports: Sequence[ViewReport]
) -> list[Absence]:
    idle = [w.view for w, r in zip(windows, reports, strict=True) if r.written == 0]
    return absent_views(store, idle) if idle else []


def select_views(plan: ServingPlan, names: Sequence[str] | None) -> list[FeatureViewPlan]:
    """The named views (all online views with a batch source by default), checked."""
    if names:
        unknown = [n for n in names if n not in plan.feature_views]
        if unknown:
            known = ", ".join(sorted(plan.feature_views))
            raise UsageError(f"unknown feature views {unknown} (known: {known})")
        chosen = [plan.feature_views[n] for n in dict.fromkeys(names)]
        for view in chosen:
            if view.source is None:
                raise UsageError(f"feature view {view.name!r} has no Parquet (file) batch source")
            if not view.online:
                raise UsageError(f"feature view {view.name!r} is not online (online=False)")
        return chosen
    return [v for v in plan.feature_views.values() if v.online and v.source is not None]


def explicit_windows(
    views: Sequence[FeatureViewPlan], start: datetime | None, end: datetime | None
) -> list[ViewWindow]:
    if start is None or end is None:
        raise UsageError("give --start and --end, or --incremental")
    if start > end:
        raise UsageError(f"--start {start.isoformat()} is after --end {end.isoformat()}")
    return [ViewWindow(v, start, end) for v in views]


def incremental_windows(
    plan: ServingPlan,
    files: RepoFiles,
    views: Sequence[FeatureViewPlan],
    end: datetime,
    now: datetime,
) -> list[ViewWindow]:
    """From each view's last recorded end (else now - ttl, as Feast) to `end`."""
    until = materialized_until(read_registry(files.registry), plan.project)
    windows = []
    for view in views:
        lookback = timedelta(seconds=view.ttl_s) if view.ttl_s else NO_TTL_LOOKBACK
        windows.append(ViewWindow(view, until.get(view.name, now - lookback), end))
    return windows


def materialize_view(
    store: OnlineStore, window: ViewWindow, repo: Path, project: str
) -> ViewReport:
    started = time.perf_counter()
    view = window.view
    files = source_files(view, repo)
    scanned = 0

    def count(rows: int) -> None:
        nonlocal scanned
        scanned += rows
        read_progress.advance(rows)

    with Progress(f"{view.name} read", total_rows(files)) as read_progress:
        latest = latest_per_entity(view, files, window.start, window.end, count)
    read_s = time.perf_counter() - started
    log.info("%s: %d rows -> %d entity rows in %.2f s", view.name, scanned, latest.num_rows, read_s)
    with Progress(f"{view.name} write", latest.num_rows) as write_progress:
        counts = store.write_view(
            view.name,
            [f.name for f in view.features],
            _row_batches(view, latest, project),
            on_batch=lambda written, skipped: write_progress.advance(written + skipped),
        )
    log.info("%s: written in %.2f s", view.name, time.perf_counter() - started - read_s)
    return ViewReport(
        view=view.name,
        start=window.start,
        end=window.end,
        rows_scanned=scanned,
        entity_rows=latest.num_rows,
        written=counts.written,
        skipped=counts.skipped,
        values=counts.written * len(view.features),
        elapsed_s=time.perf_counter() - started,
    )


def _row_batches(view: FeatureViewPlan, latest: Latest, project: str) -> Iterator[FramedRows]:
    """Encode the rows chunk by chunk; yield write-sized batches of Feast's bytes."""
    for chunk in latest.chunks(ENCODE_ROWS):
        keys = _encode(
            view, "join keys", encoding.encode_entity_keys, *_key_args(view, chunk, project)
        )
        event_ts = _encode(view, EVENT_TS, encoding.encode_timestamps, chunk[EVENT_TS])
        values = [
            _encode(view, f.name, encoding.encode_values, f.dtype, chunk[f.name])
            for f in view.features
        ]
        yield from framed_batches(keys, event_ts, values, WRITE_ROWS)


def _key_args(view: FeatureViewPlan, chunk: pa.Table, project: str) -> tuple[Any, ...]:
    names = [k.name for k in view.join_keys]
    return names, [k.dtype for k in view.join_keys], [chunk[n] for n in names], project


def _encode(
    view: FeatureViewPlan, what: str, encode: Callable[..., list[bytes]], *args: Any
) -> Any:
    try:
        return encode(*args)
    except codec.CodecError as exc:
        raise DataError(f"feature view {view.name!r}, {what}: {exc}") from exc


def _record(files: RepoFiles, plan: ServingPlan, window: ViewWindow) -> ServingPlan:
    """Record the view's interval in Feast's registry; keep the plan current with it."""
    interval = {window.view.name: (window.start, window.end)}
    before, after = record_materialization(files.registry, plan.project, interval)
    if plan.registry_fingerprint != before:  # the registry had changed: leave the plan stale
        return plan
    return save_plan(replace(plan, registry_fingerprint=after), files.plan)
