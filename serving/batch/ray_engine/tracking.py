"""Following Ray tasks from the driver: results as they finish, progress, stage times, errors.

Concern: the one place where a task's failure becomes a Carrara error (a task raising a
CarraraError re-raises it as it is: a DataError naming a partition file and column stays that;
a worker or node lost beyond Ray's retries is a ClusterError naming the cluster's address),
and where progress (rows, rows/s, the slowest partition so far) and per-stage times are kept.
On a failure the tasks still pending are cancelled (best effort): nothing is recorded anyway.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from serving.errors import CarraraError
from serving.progress import Progress

log = logging.getLogger(__name__)

WAIT_S = 0.5  # the longest the driver waits for a task before it looks again


class ClusterError(CarraraError):
    """The Ray cluster failed a task beyond its retries (a worker or node lost)."""


@dataclass(frozen=True)
class PartDone:
    """What a task reports about its partition: rows handled and how long it took."""

    part: str  # a file, a file's row groups or a key bucket, as the user would look for it
    rows: int
    elapsed_s: float
    peak_rss_mb: float = field(default_factory=lambda: peak_rss_mb())


def peak_rss_mb() -> float:
    """The peak resident memory of this process so far (a Ray worker: over its tasks)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class StageTimes:
    """Seconds spent per stage of a run, in the order the stages ran."""

    seconds: dict[str, float] = field(default_factory=dict)
    peak_worker_rss_mb: float = 0.0  # the largest peak memory a task's worker reported

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def describe(self) -> str:
        stages = ", ".join(f"{name} {s:.2f} s" for name, s in self.seconds.items())
        return f"{stages}; peak worker memory {self.peak_worker_rss_mb:,.0f} MiB"


def follow(
    ray: Any,
    refs: Sequence[Any],
    label: str,
    total_rows: int | None,
    address: str,
    stages: StageTimes | None = None,
    on_done: Callable[[int, PartDone], None] | None = None,
) -> list[PartDone]:
    """Wait for tasks that each return a PartDone; show rows, rows/s and the slowest
    partition as they finish, and tell `on_done(index in refs, part)`. Results in the order
    of `refs`."""
    index = {ref: i for i, ref in enumerate(refs)}
    done: list[PartDone | None] = [None] * len(refs)
    pending = list(refs)
    rows, started = 0, time.perf_counter()
    slowest: PartDone | None = None
    with Progress(label, total_rows) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=WAIT_S)
            if ready and pending:  # and whatever else finished meanwhile
                more, pending = ray.wait(pending, num_returns=len(pending), timeout=0)
                ready += more
            for ref in ready:
                try:
                    part = gather(ray, ref, label, address)
                except CarraraError:
                    _cancel(ray, pending)  # the run has failed: stop writing for nothing
                    raise
                done[index[ref]] = part
                if on_done is not None:
                    on_done(index[ref], part)
                if stages is not None:
                    stages.peak_worker_rss_mb = max(stages.peak_worker_rss_mb, part.peak_rss_mb)
                rows += part.rows
                if slowest is None or part.elapsed_s > slowest.elapsed_s:
                    slowest = part
                rate = rows / max(time.perf_counter() - started, 1e-9)
                detail = f"{rate:,.0f} rows/s, slowest {slowest.part} {slowest.elapsed_s:.1f} s"
                bar.advance(part.rows, detail)
                log.info(
                    "%s: %s, %d rows in %.2f s (%s)",
                    label,
                    part.part,
                    part.rows,
                    part.elapsed_s,
                    detail,
                )
    return [d for d in done if d is not None]


def _cancel(ray: Any, refs: Sequence[Any]) -> None:
    for ref in refs:
        with contextlib.suppress(Exception):  # best effort: a task may finish meanwhile
            ray.cancel(ref)


def gather(ray: Any, refs: Any, what: str, address: str) -> Any:
    """`ray.get(refs)`, a task's CarraraError re-raised as it is, Ray's failures as one
    ClusterError line naming the cluster."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, CarraraError):
            raise cause from None
        raise ClusterError(
            f"{what}: a task failed on the Ray cluster at {address}: {_first_line(cause or exc)}"
        ) from None
    except ray.exceptions.RayError as exc:
        raise ClusterError(
            f"{what}: the Ray cluster at {address} lost a worker or node beyond its retries "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
