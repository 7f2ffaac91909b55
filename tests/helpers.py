"""What test modules share besides fixtures: the test world's clock, repo copies, Redis
snapshots, subprocess runs and the one polling helper.

Invariants:
- No test waits on the wall clock: the test world lies wholly in the past (see WORLD_END), and
  every wait is `wait_until` on a condition, failing by a clear AssertionError at its timeout.
- Subprocesses are stopped by their pid when they overrun (SIGINT, then SIGKILL), so a hung
  one fails its test instead of outliving it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import redis

ROOT = Path(__file__).resolve().parents[1]

RPC_TIMEOUT_S = 5.0  # every RPC a test makes carries this deadline: a hung call fails fast
SERVER_MAX_ROWS = 50  # the shared `server` fixture's row limit per Predict
# materialize_world's window reaches back from WORLD_END by the longest ttl (route_stats):
# the whole 30-hour test world and the route rows before it.
MATERIALIZE_DAYS = 3


def world_end(now: datetime) -> datetime:
    """Where the test world ends for a session started at `now`: now floored to 5 minutes,
    minus 15 minutes.

    In the past, so that every row is already *created*: the sample world stamps rows
    `created` after their event time (zones +20 s, drivers +60 s, routes at midnight + 10 min),
    and both the offline store and `check-consistency` hide a row until its created time
    has passed. Recent, so that served features are fresh: the newest zone_stats row (event
    time end - 5 min, ttl 1 h) stays fresh until now + 35 min at least; drivers (hourly, ttl
    26 h) and routes (daily, ttl 3 days) far longer.
    """
    floored = now.replace(minute=now.minute - now.minute % 5, second=0, microsecond=0)
    return floored - timedelta(minutes=15)


WORLD_END = world_end(datetime.now(UTC))

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None], timeout_s: float, interval_s: float = 0.05, what: str = ""
) -> T:
    """Call `condition` every `interval_s` until it returns something truthy, and return that.

    After `timeout_s` (a monotonic deadline; the condition is always tried once more at it)
    raise AssertionError naming `what` (or the condition) and its last value.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            name = what or getattr(condition, "__qualname__", repr(condition))
            raise AssertionError(f"not within {timeout_s:g} s: {name} (last: {value!r})")
        time.sleep(interval_s)


def write_repo(target: Path, data_dir: Path, redis_port: int) -> Path:
    """A copy of feature_repo/ whose online store is the test's redis-server."""
    shutil.copytree(
        ROOT / "feature_repo", target, ignore=shutil.ignore_patterns("data", "__pycache__")
    )
    config = (target / "feature_store.yaml").read_text()
    assert '"127.0.0.1:6379"' in config, "feature_store.yaml changed: update write_repo"
    config = config.replace('"127.0.0.1:6379"', f'"127.0.0.1:{redis_port}"')
    (target / "feature_store.yaml").write_text(config)
    (target / "data").mkdir()
    for parquet in data_dir.glob("*.parquet"):
        shutil.copy(parquet, target / "data" / parquet.name)
    return target


def materialize_world(repo: Path, redis_url: str) -> None:
    """Materialize the whole test world (every view, up to WORLD_END) into `redis_url`.

    In this process: the command line around it has its own tests (test_materialize.py).
    """
    from serving.batch.materialize import materialize

    start = WORLD_END - timedelta(days=MATERIALIZE_DAYS)
    report = materialize(repo, start, WORLD_END, redis_url=redis_url)
    assert report.written > 0, report
    push_recent_events(repo, redis_url)


def push_recent_events(repo: Path, redis_url: str, chunk: int = 5_000) -> None:
    """Push the events that windowed views hold as of now or may ever again (those within
    ttl + the longest window + a tile of now), as `carrara ingest` would have: materialize
    leaves windowed views alone."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from serving.ingest.push import Pusher, push_columns
    from serving.repo.compile import ensure_plan
    from serving.store.online_store import OnlineStore
    from serving.store.settings import redis_settings

    plan = ensure_plan(repo)
    windowed = [v for v in plan.feature_views.values() if v.windowed and v.source]
    store = OnlineStore(redis_settings(repo, redis_url), plan.project)
    try:
        pusher = Pusher(plan, repo, store)
        for source in sorted({v.push_source for v in windowed if v.push_source}):
            views = plan.push_views(source)
            reach_s = max((v.ttl_s or 0) + max(a.window_s for a in v.aggregations) + 2 * v.hop_s
                          for v in views if v.windowed)  # fmt: skip
            assert views[0].source is not None
            events = pq.read_table(repo / views[0].source.path)
            stamp = views[0].source.timestamp_field
            micros = events[stamp].cast(pa.timestamp("us", "UTC")).cast(pa.int64())
            cutoff = int((time.time() - reach_s) * 1e6)
            events = events.filter(pc.greater_equal(micros, cutoff))
            names = [c.name for c in push_columns(plan, source, events.column_names)]
            for first in range(0, events.num_rows, chunk):
                part = events.slice(first, chunk)
                columns = {n: part[n].to_pylist() for n in names if n != stamp}
                columns[stamp] = part[stamp].cast(pa.timestamp("us", "UTC")).cast(pa.int64())
                columns[stamp] = columns[stamp].to_pylist()
                pusher.push(source, columns)
    finally:
        store.close()


def raw_redis(url: str) -> Any:
    """redis-py's client, for looking at Redis by hand. Typed Any: redis-py annotates keys as
    str and replies as `Awaitable[T] | T` (its sync and asyncio clients share annotations),
    where the tests pass bytes keys and get plain replies."""
    return redis.Redis.from_url(url)


Snapshot = dict[bytes, tuple[dict[bytes, bytes], int]]


def snapshot(url: str) -> Snapshot:
    """Every key of the Redis at `url`: its hash fields and its TTL (-1: none)."""
    client = raw_redis(url)
    try:
        return {key: (client.hgetall(key), client.ttl(key)) for key in client.scan_iter(count=500)}
    finally:
        client.close()


def hash_of(url: str, key: bytes) -> dict[bytes, bytes]:
    """The hash stored at `key` in the Redis at `url` ({} when there is none)."""
    client = raw_redis(url)
    try:
        fields: dict[bytes, bytes] = client.hgetall(key)
        return fields
    finally:
        client.close()


def run_python(
    args: Sequence[str], timeout_s: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`python <args>` to completion, output captured as text.

    Overrunning `timeout_s` fails the test; the process is stopped by its pid first with
    SIGINT (Python unwinds, and the benchmarks stop the servers they started by their
    pids), then SIGKILL.
    """
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        out, err = _stop(process)
        raise AssertionError(
            f"python {' '.join(args)} overran {timeout_s:g} s; stopped.\n"
            f"stdout: {out[-3000:]}\nstderr: {err[-3000:]}"
        ) from None
    except BaseException:  # pytest-timeout or Ctrl-C: never leave it running
        _stop(process)
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGINT by pid, then SIGKILL if it has not exited within 30 s; its last output."""
    process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()
