"""Materialize: Parquet batch sources -> latest row per entity -> Feast's bytes -> Redis.

Concern: `carrara materialize` on any Feast repo whose batch sources are Parquet files and
whose online store is Redis, with the same result as `feast materialize`.

Invariants:
- Reads the serving plan only: no `import feast` on this path while the plan is current
  (`ensure_plan` compiles a missing or stale one once, through Feast).
- Window [start, end], both ends included; per entity the latest row (event, then created
  timestamp), as Feast selects (parquet_source.py).
- Bytes are Feast's (serving/store/encoding.py), keys in the repo's
  entity_key_serialization_version; a row is written only when newer than the stored
  `_ts:<view>`, atomically (serving/store/writes.py); key_ttl_seconds applies to written rows.
- Nothing is written before every selected view passed preflight.py (its definition, its
  files' schemas, and the rows Feast's materialize would refuse); only what the run writes
  must be supported: an unsupported construct elsewhere in the repo is a warning.
- After every view is written, their intervals are recorded in Feast's registry at once
  (serving/repo/feast_registry.py) and the plan's registry fingerprint follows, so the plan
  stays current: a run cut short records nothing, and the next incremental run redoes it.
  Incremental runs resume from the latest recorded end, exactly as
  `feast materialize-incremental` does (a view never materialized: now - ttl; ttl None or 0:
  52 weeks back, as Feast 0.67, whose registry reads ttl=None as 0).
- Carrara writes Int64 values beyond 2^53 exactly where Feast's materialize rounds them
  through float64 (an Int64 column holding nulls goes through pandas as float64); it says so
  once per view.
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
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from serving.batch.parquet_source import (
    EVENT_TS,
    Latest,
    check_source,
    latest_per_entity,
    may_hold_nulls,
    source_files,
    total_rows,
)
from serving.batch.preflight import check_definition, check_rows
from serving.errors import DataError, PlanError, UsageError
from serving.progress import Progress
from serving.repo.compile import ensure_plan
from serving.repo.feast_registry import materialized_until, read_registry, record_materialization
from serving.repo.plan import MATERIALIZE, FeatureViewPlan, RepoFiles, ServingPlan, save_plan
from serving.store import codec, encoding
from serving.store.online_store import OnlineStore
from serving.store.presence import Absence, absent_views
from serving.store.settings import redis_settings
from serving.store.write_guard import FramedRows, framed_batches

ENCODE_ROWS = 16_384  # rows encoded at once (numpy-vectorised)
WRITE_ROWS = 1_000  # rows per atomic script call: Redis serves nothing else while it runs
NO_TTL_LOOKBACK = timedelta(weeks=52)  # Feast's incremental start for ttl None or 0
EXACT_INT_LIMIT = 2**53  # beyond, float64 (Feast's route for Int64 columns with nulls) rounds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewWindow:
    view: FeatureViewPlan
    start: datetime
    end: datetime


@dataclass(frozen=True)
class PreparedView:
    """A view checked and located, ready to write: nothing of it is written yet."""

    window: ViewWindow
    latest: Latest
    rows_scanned: int
    started: float  # perf_counter when its preparation began


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


class MaterializeEngine(Protocol):
    """Where views are read and written: `prepare` checks a view and finds its latest rows,
    writing nothing; `write` writes what `prepare` returned, through the guard."""

    def prepare(self, window: ViewWindow, repo: Path, plan: ServingPlan) -> Any: ...

    def write(self, store: OnlineStore, prepared: Any, plan: ServingPlan) -> ViewReport: ...


class LocalEngine:
    """This process: one view at a time, streamed (prepare_view, write_view)."""

    def prepare(self, window: ViewWindow, repo: Path, plan: ServingPlan) -> PreparedView:
        return prepare_view(window, repo, plan)

    def write(self, store: OnlineStore, prepared: PreparedView, plan: ServingPlan) -> ViewReport:
        return write_view(store, prepared, plan)


def materialize(
    repo: Path,
    start: datetime | None = None,
    end: datetime | None = None,
    incremental: bool = False,
    views: Sequence[str] | None = None,
    redis_url: str | None = None,
    on_view: Callable[[ViewReport], None] | None = None,
    engine: MaterializeEngine | None = None,
) -> MaterializeReport:
    """Materialize the repo's views into its Redis; `on_view` hears of each finished view.

    `engine` reads and writes the views (default: this process); selection, windows, the
    checks' order (every view prepared before the first write) and the recording are the same
    whichever engine runs."""
    started = time.perf_counter()
    engine = engine or LocalEngine()
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
        prepared = [engine.prepare(window, files.repo, plan) for window in windows]
        for item in prepared:  # every view checked: from here on, only writes
            report = engine.write(store, item, plan)
            reports.append(report)
            if on_view:
                on_view(report)
        plan = _record(files, plan, windows)
        absent = _absent_after_nothing_written(store, plan, windows, reports) if incremental else []
    finally:
        store.close()
    return MaterializeReport(tuple(reports), time.perf_counter() - started, tuple(absent))


def _absent_after_nothing_written(
    store: OnlineStore,
    plan: ServingPlan,
    windows: Sequence[ViewWindow],
    reports: Sequence[ViewReport],
) -> list[Absence]:
    idle = [w.view for w, r in zip(windows, reports, strict=True) if r.written == 0]
    version = plan.entity_key_serialization_version
    return absent_views(store, idle, key_version=version) if idle else []


def select_views(plan: ServingPlan, names: Sequence[str] | None) -> list[FeatureViewPlan]:
    """The named views (by default every online, enabled view, as `feast materialize`, but
    windowed ones), each checked by its definition; unsupported constructs elsewhere are logged
    as warnings."""
    if names:
        unknown = [n for n in names if n not in plan.feature_views]
        plan.require_supported(unknown, MATERIALIZE)  # e.g. an on-demand view it cannot write
        if unknown:
            known = ", ".join(sorted(plan.feature_views))
            raise UsageError(f"unknown feature views {unknown} (known: {known})")
        chosen = [plan.feature_views[n] for n in dict.fromkeys(names)]
        for view in chosen:
            if not view.online:
                raise UsageError(f"feature view {view.name!r} is not online (online=False)")
    else:
        # A windowed view's online values are kept from pushed events (ingest), not its source.
        chosen = [
            v for v in plan.feature_views.values() if v.online and v.enabled and not v.windowed
        ]
        written_on_demand = {
            u.view
            for u in plan.unsupported
            if u.kind == "on-demand feature view" and MATERIALIZE in u.needed_by and u.view
        }
        plan.require_supported(sorted(written_on_demand), MATERIALIZE)
    for view in chosen:
        try:
            check_definition(plan, view)
        except PlanError as exc:
            if names or len(chosen) == 1:
                raise
            raise PlanError(f"{exc}; name the other views with --views") from exc
    names_chosen = {v.name for v in chosen}
    for record in plan.unsupported:
        if record.view not in names_chosen and (record.view is not None or not record.needed_by):
            log.warning("not needed by this run: %s", record.describe())
    return chosen


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
        # ttl None and 0 alike: Feast 0.67 reads a missing ttl from its registry as 0
        lookback = timedelta(seconds=view.ttl_s) if view.ttl_s else NO_TTL_LOOKBACK
        windows.append(ViewWindow(view, until.get(view.name, now - lookback), end))
    return windows


def prepare_view(window: ViewWindow, repo: Path, plan: ServingPlan) -> PreparedView:
    """Locate each entity's latest row in the window and check what Feast would refuse."""
    started = time.perf_counter()
    view = window.view
    files = source_files(view, repo)
    check_source(view, files)
    scanned = 0

    def count(rows: int) -> None:
        nonlocal scanned
        scanned += rows
        read_progress.advance(rows)

    with Progress(f"{view.name} read", total_rows(files)) as read_progress:
        latest = latest_per_entity(view, files, window.start, window.end, count)
    check_rows(view, latest, plan.project, plan.entity_key_serialization_version)
    read_s = time.perf_counter() - started
    log.info("%s: %d rows -> %d entity rows in %.2f s", view.name, scanned, latest.num_rows, read_s)
    return PreparedView(window, latest, scanned, started)


def write_view(store: OnlineStore, prepared: PreparedView, plan: ServingPlan) -> ViewReport:
    """Write a prepared view's rows; say once if Carrara wrote Int64 values Feast rounds."""
    window, latest = prepared.window, prepared.latest
    view = window.view
    written_at = time.perf_counter()
    exact = _ExactInts(view, latest.files)
    with Progress(f"{view.name} write", latest.num_rows) as write_progress:
        counts = store.write_view(
            view.name,
            [f.name for f in view.features],
            _row_batches(view, latest, plan.project, plan.entity_key_serialization_version, exact),
            on_batch=lambda written, skipped: write_progress.advance(written + skipped),
        )
    exact.warn()
    log.info("%s: written in %.2f s", view.name, time.perf_counter() - written_at)
    return ViewReport(
        view=view.name,
        start=window.start,
        end=window.end,
        rows_scanned=prepared.rows_scanned,
        entity_rows=latest.num_rows,
        written=counts.written,
        skipped=counts.skipped,
        values=counts.written * len(view.features),
        elapsed_s=time.perf_counter() - prepared.started,
    )


class _ExactInts:
    """Counts the Int64 values beyond 2^53 of columns that may hold nulls: Feast's materialize
    takes such a column through pandas as float64 and writes them rounded, Carrara exactly."""

    def __init__(self, view: FeatureViewPlan, files: list[str]) -> None:
        self.view = view
        self.features = [
            f.name
            for f in view.features
            if f.dtype == "Int64" and may_hold_nulls(view, files, f.name)
        ]
        self.counts: dict[str, int] = {}

    def see(self, chunk: pa.Table) -> None:
        for name in self.features:
            column = chunk[name]
            beyond_mask = pc.or_(
                pc.greater(column, EXACT_INT_LIMIT), pc.less(column, -EXACT_INT_LIMIT)
            )
            beyond = int(pc.sum(beyond_mask).as_py() or 0)
            if beyond:
                self.counts[name] = self.counts.get(name, 0) + beyond

    def warn(self) -> None:
        for name, count in self.counts.items():
            log.warning(
                "feature view %r, feature %r: %d Int64 values beyond 2^53 written exactly; "
                "Feast's materialize rounds them (it reads an Int64 column holding nulls as "
                "float64), so Feast would have written them rounded",
                self.view.name,
                name,
                count,
            )


def _row_batches(
    view: FeatureViewPlan,
    latest: Latest,
    project: str,
    key_version: int = 3,
    exact: _ExactInts | None = None,
) -> Iterator[FramedRows]:
    """Encode the rows chunk by chunk; yield write-sized batches of Feast's bytes."""
    for chunk in latest.chunks(ENCODE_ROWS):
        keys = _encode(
            view,
            "join keys",
            encoding.encode_entity_keys,
            *_key_args(view, chunk, project),
            key_version,
        )
        event_ts = _encode(view, EVENT_TS, encoding.encode_timestamps, chunk[EVENT_TS])
        values = [
            _encode(view, f.name, encoding.encode_values, f.dtype, chunk[f.name])
            for f in view.features
        ]
        if exact is not None:
            exact.see(chunk)
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


def _record(files: RepoFiles, plan: ServingPlan, windows: Sequence[ViewWindow]) -> ServingPlan:
    """Record the views' intervals in Feast's registry; keep the plan current with it."""
    if not windows:
        return plan
    intervals = {w.view.name: (w.start, w.end) for w in windows}
    before, after = record_materialization(files.registry, plan.project, intervals)
    if plan.registry_fingerprint != before:  # the registry had changed: leave the plan stale
        return plan
    return save_plan(replace(plan, registry_fingerprint=after), files.plan)
