"""Composition root of the prediction server: build from settings, start, watch, stop.

Concurrency model: grpcio's synchronous server on a thread pool, one process per core
sharing the port (SO_REUSEPORT; `--processes`). The request path is a short CPU burst around
one blocking Redis round trip; with hiredis and the GIL released during the socket wait, a
thread pool keeps the tail flat, while `grpc.aio` would add an event-loop hop and force the
async Redis client, which parses replies in Python per call (`benchmarks/online.py` compares).
Two threads per process by default: one computes while the other waits on Redis, and every
further thread only adds GIL hand-offs (futex sleeps and wakes, ~30% of a loaded server's
CPU): with loopback Redis, 2 threads served ~20% more ETA calls/s than 4 or 8 at lower CPU per
call (5 of 5 interleaved runs; +14-35% in the 2026-12-01 concurrency study, where the aio
echo floor itself was ~20% slower than the sync one). A Redis further away than its CPU
burst wants more threads.

Two daemon threads watch the world: Redis health (the standard health service turns
NOT_SERVING while Redis is unreachable) and the model registry (an alias moved -> the new
version is loaded beside the old and swapped in atomically; a broken one is refused and
logged while the old keeps serving).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving.config import redis_settings
from serving.errors import StoreUnavailableError, UsageError
from serving.feature_repo import ensure_plan
from serving.metrics import Metrics
from serving.online_store import OnlineStore
from serving.pb.carrara.v1 import prediction_pb2 as pb
from serving.pb.carrara.v1 import prediction_pb2_grpc as pb_grpc
from serving.prediction import Predictor
from serving.registry import ModelRegistry
from serving.servicer import PredictionServicer

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PredictionService"].full_name


@dataclass(frozen=True)
class ServerSettings:
    repo: Path
    registry: Path
    host: str = "127.0.0.1"
    port: int = 50051  # 0: any free port
    redis_url: str | None = None
    metrics_port: int | None = None  # None: no metrics endpoint; 0: any free port
    max_rows: int = 1_000
    threads: int = 2  # see the module docstring
    watch_interval_s: float = 1.0
    reuse_port: bool = False  # several processes on one port


class Server:
    def __init__(self, settings: ServerSettings) -> None:
        started = time.perf_counter()
        self.settings = settings
        plan = ensure_plan(settings.repo)
        self.metrics = Metrics()
        self.store = OnlineStore(redis_settings(settings.repo, settings.redis_url), plan.project)
        self.predictor = Predictor(
            plan, settings.repo, self.store, ModelRegistry(settings.registry), self.metrics
        )
        try:
            self.predictor.load_all()
        except BaseException:
            self.store.close()
            raise
        self.health = health.HealthServicer()
        self._grpc = grpc.server(
            ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="carrara-rpc"),
            options=[("grpc.so_reuseport", int(settings.reuse_port))],
        )
        pb_grpc.add_PredictionServiceServicer_to_server(  # type: ignore[no-untyped-call]
            PredictionServicer(self.predictor, self.metrics, settings.max_rows), self._grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc
        )
        self.port = 0
        self.metrics_port: int | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.build_s = time.perf_counter() - started

    def start(self) -> int:
        address = f"{self.settings.host}:{self.settings.port}"
        try:
            self.port = self._grpc.add_insecure_port(address)
        except RuntimeError as exc:  # grpc's "Failed to bind": the port is taken or the host bad
            raise UsageError(f"cannot listen on {address}: port in use or bad host") from exc
        self._grpc.start()
        if self.settings.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve(
                    self.settings.host, self.settings.metrics_port
                )
            except OSError as exc:
                self._grpc.stop(0)
                raise UsageError(
                    f"cannot serve metrics on {self.settings.host}:{self.settings.metrics_port}: "
                    f"{exc.strerror}"
                ) from exc
        self._check_health()
        for target, name in ((self._watch_health, "health"), (self._watch_models, "reload")):
            thread = threading.Thread(target=target, name=f"carrara-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self.port

    def stop(self, grace_s: float = 2.0) -> None:
        self._stop.set()
        self._grpc.stop(grace_s).wait()
        self.metrics.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self.store.close()

    def wait(self) -> None:
        self._grpc.wait_for_termination()

    def _check_health(self) -> None:
        try:
            self.store.ping(timeout_s=0.5)
            status = health_pb2.HealthCheckResponse.SERVING
        except StoreUnavailableError as exc:
            log.warning("health: NOT_SERVING (%s)", exc)
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)

    def _watch_health(self) -> None:
        while not self._stop.wait(self.settings.watch_interval_s):
            self._check_health()

    def _watch_models(self) -> None:
        while not self._stop.wait(self.settings.watch_interval_s):
            try:
                self.predictor.reload()
            except Exception:  # the watcher must outlive any one bad reload
                log.exception("model reload failed; the serving models are unchanged")
