"""Shared benchmark helpers: timing with warm-up and percentiles, child processes with peak
RSS, a private redis-server, machine facts, JSON out.

Small and generic on purpose: each `benchmarks/<name>.py` composes these. Conventions: times
are taken with `perf_counter_ns`; latency is reported as p50/p90/p99/max (serving lives at
p99), throughput as items/s; every process a benchmark starts is stopped by its pid.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving.store.redis_process import private_redis

ROOT = Path(__file__).resolve().parents[1]


# --- timing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float


def latency(samples_ns: Sequence[int]) -> Latency:
    """Percentiles (nearest rank) of samples in nanoseconds, in milliseconds."""
    if not samples_ns:
        raise ValueError("no samples")
    ordered = sorted(samples_ns)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] / 1e6

    return Latency(
        count=len(ordered),
        p50_ms=rank(0.50),
        p90_ms=rank(0.90),
        p99_ms=rank(0.99),
        max_ms=ordered[-1] / 1e6,
        mean_ms=sum(ordered) / len(ordered) / 1e6,
    )


def measure(
    call: Callable[[], object], repeat: int, warmup: int = 10, budget_s: float | None = None
) -> Latency:
    """Call `warmup` times untimed, then up to `repeat` times timed one by one (stopping
    early once `budget_s` seconds of timed calls have passed, if given)."""
    for _ in range(warmup):
        call()
    return latency(timed_calls(call, repeat, budget_s))


def timed_calls(
    call: Callable[[], object], repeat: int, budget_s: float | None = None
) -> list[int]:
    """Each call's duration in nanoseconds, one call at a time: at most `repeat` calls and,
    given `budget_s`, no new call after that many seconds (so at least one call)."""
    deadline = None if budget_s is None else time.perf_counter_ns() + int(budget_s * 1e9)
    samples = []
    for _ in range(repeat):
        started = time.perf_counter_ns()
        call()
        ended = time.perf_counter_ns()
        samples.append(ended - started)
        if deadline is not None and ended >= deadline:
            break
    return samples


def per_second(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


# --- child processes ------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildRun:
    args: list[str]
    returncode: int
    wall_s: float
    peak_rss_mb: float  # the child's own maximum resident set size (not its children's)
    stdout: str
    stderr: str


def run_child(
    args: Sequence[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 3600,
) -> ChildRun:
    """Run a process to completion; its wall time and peak RSS (os.wait4's ru_maxrss)."""
    started = time.perf_counter()
    with (
        open(os.devnull, "rb") as stdin,
        _temp_text() as (out, out_path),
        _temp_text() as (err, err_path),
    ):
        process = subprocess.Popen(
            list(args), cwd=cwd, env=env, stdin=stdin, stdout=out, stderr=err
        )
        deadline = time.monotonic() + timeout_s
        while True:  # bounded by the deadline
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.01)
        wall_s = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        stdout, stderr = out_path.read_text(), err_path.read_text()
    return ChildRun(list(args), process.returncode, wall_s, usage.ru_maxrss / 1024, stdout, stderr)


@contextmanager
def _temp_text() -> Iterator[tuple[Any, Path]]:
    import tempfile

    handle = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
    try:
        yield handle, Path(handle.name)
    finally:
        handle.close()
        Path(handle.name).unlink(missing_ok=True)


# --- a private redis-server -----------------------------------------------------------------


@contextmanager
def redis_server(workdir: Path, extra_args: Sequence[str] = (), attempts: int = 5) -> Iterator[int]:
    """A redis-server on a free loopback port, no persistence; yields the port, stops by pid."""
    with private_redis(workdir, extra_args=extra_args, attempts=attempts) as server:
        yield server.port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far, all its threads (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Pids of a live process's children, grandchildren and so on (Linux /proc); [] if gone."""
    found: list[int] = []
    todo = [pid]
    while todo:  # bounded: each pid is visited once, the process tree is finite
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += [c for c in children if c not in found]
            todo += children
    return found


def stop_tree(process: subprocess.Popen[Any], timeout_s: float = 10) -> None:
    """Stop a process by its pid (SIGTERM, then SIGKILL after `timeout_s`), then any of its
    descendants still running, each by its own pid."""
    import signal

    children = descendants(process.pid) if process.poll() is None else []
    _stop(process, timeout_s)
    for pid in children:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.02)  # not our child: it is reaped by its parent or init


def _stop(process: subprocess.Popen[Any], timeout_s: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- facts and output -----------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(memory_gb, 1),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "unknown"


def stamp() -> dict[str, Any]:
    """Machine, commit and date: what every result file carries."""
    return {"machine": machine(), "commit": commit(), "date": datetime.now(UTC).isoformat()}


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_plain))
    tmp.replace(path)


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, datetime | Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain text table (numbers right-aligned, with thousands separators)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    for row, raw in zip(cells, rows, strict=True):
        lines.append(
            "  ".join(
                c.rjust(w) if isinstance(v, int | float) else c.ljust(w)
                for c, w, v in zip(row, widths, raw, strict=True)
            )
        )
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
