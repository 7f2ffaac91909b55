"""Run the server in the foreground: one process, or N sharing the port, until a signal.

With N > 1 the parent starts N children (spawned, not forked: grpc must not cross a fork),
each binding the same port with SO_REUSEPORT so the kernel spreads connections; the parent
waits, and on SIGINT/SIGTERM stops them all by pid.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import threading
from dataclasses import replace
from types import FrameType

from serving.errors import UsageError
from serving.online.server import Server, ServerSettings
from serving.ports import free_port

log = logging.getLogger(__name__)


def serve_forever(settings: ServerSettings, processes: int = 1) -> int:
    if processes == 1:
        return _run_one(settings)
    if settings.metrics_port is not None:
        raise UsageError(
            "--metrics-port serves one process; with --processes N, scrape each "
            "process through its own `carrara serve` instead"
        )
    if settings.port == 0:
        settings = replace(settings, port=free_port())
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_run_one, args=(settings,), daemon=False) for _ in range(processes)
    ]
    for child in children:
        child.start()
    print(f"serving on {settings.host}:{settings.port} with {processes} processes", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _s, _f: stop.set())
    while not stop.wait(0.5):
        if any(not child.is_alive() for child in children):
            log.error("a server process exited; stopping the others")
            break
    for child in children:
        if child.is_alive():
            child.terminate()
    for child in children:
        child.join(timeout=10)
    return 0 if stop.is_set() else 1


def _run_one(settings: ServerSettings) -> int:
    server = Server(settings)
    port = server.start()
    security = _security(settings)
    print(
        f"serving {', '.join(server.predictor.model_names()) or 'no models'} on "
        f"{settings.host}:{port} (ready in {server.build_s:.2f} s"
        + (f", {security}" if security else "")
        + (f", metrics on :{server.metrics_port}" if server.metrics_port else "")
        + ")",
        flush=True,
    )
    done = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        done.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    done.wait()
    server.stop()
    print("server stopped", file=sys.stderr, flush=True)
    return 0


def _security(settings: ServerSettings) -> str:
    """The ready line's security words: "mTLS, tokens", "TLS", "" and so on."""
    parts = []
    if settings.tls is not None:
        parts.append("mTLS" if settings.tls.ca else "TLS")
    if settings.auth_tokens is not None:
        parts.append("tokens")
    if not settings.reflection:
        parts.append("no reflection")
    return ", ".join(parts)
