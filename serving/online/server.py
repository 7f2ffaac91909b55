"""Composition root of the prediction server: build from settings, start, watch, stop.

Concurrency model: grpcio's synchronous server on a thread pool, in one process or in N
sharing the port (SO_REUSEPORT; `--processes`). The request path is a short CPU burst around
one blocking Redis round trip, during which the GIL is released: a thread pool keeps the tail
flat, where `grpc.aio` would add an event-loop hop and either block its loop on the Redis read
or need an async Redis client. Two threads per process by default: one computes while the
other waits on Redis, and every further thread only adds GIL hand-offs. A Redis further away
than the CPU burst wants more threads (`--threads`). `python -m benchmarks.online
--concurrency-study` compares threads, processes and `grpc.aio`; its figures are in
benchmarks/README.md.

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

from serving.errors import StoreUnavailableError, UsageError
from serving.models.registry import ModelRegistry
from serving.online.metrics import ServerMetrics
from serving.online.predictor import Predictor
from serving.online.servicer import PredictionServicer, add_to_server
from serving.pb.carrara.v1 import prediction_pb2 as pb
from serving.repo.plan import RepoFiles, load_plan
from serving.store.online_store import OnlineStore
from serving.store.presence import absent_views
from serving.store.settings import redis_settings

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
        plan = load_plan(RepoFiles.locate(settings.repo))  # the command compiled a stale one
        self.metrics = ServerMetrics()
        self.store = OnlineStore(redis_settings(settings.repo, settings.redis_url), plan.project)
        self.predictor = Predictor(
            plan, settings.repo, self.store, ModelRegistry(settings.registry), self.metrics
        )
        try:
            self.predictor.load_all()
        except BaseException:
            self.store.close()
            raise
        for name in self.predictor.model_names():
            if not self.predictor.serves(name):
                log.error("model %s is NOT_SERVING (see above); the other models are served", name)
        self.health = health.HealthServicer()
        self._grpc = grpc.server(
            ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="carrara-rpc"),
            options=[("grpc.so_reuseport", int(settings.reuse_port))],
        )
        add_to_server(
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
        if self._check_health():
            self._report_absent_views()
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

    def _check_health(self) -> bool:
        try:
            self.store.ping(timeout_s=0.5)
            status = health_pb2.HealthCheckResponse.SERVING
        except StoreUnavailableError as exc:
            log.warning("health: NOT_SERVING (%s)", exc)
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)
        for name in self.predictor.model_names():  # per model: `grpc_health_probe -service eta`
            served = self.predictor.serves(name)
            self.health.set(name, status if served else health_pb2.HealthCheckResponse.NOT_SERVING)
        return bool(status == health_pb2.HealthCheckResponse.SERVING)

    def _report_absent_views(self) -> None:
        """Say at start-up when a served view has no key in Redis: its features would all be
        served as missing, which looks like a healthy server giving poor scores."""
        views = self.predictor.served_views()
        try:
            absent = absent_views(self.store, views)
        except StoreUnavailableError as exc:
            log.warning("could not check the online store for served views: %s", exc)
            return
        for absence in absent:
            log.warning(
                "%s; its features are served as missing until `carrara materialize` writes it",
                absence.describe(),
            )
        if views and not absent:
            log.info("the online store holds every served feature view (%d)", len(views))

    def _watch_health(self) -> None:
        while not self._stop.wait(self.settings.watch_interval_s):
            self._check_health()

    def _watch_models(self) -> None:
        while not self._stop.wait(self.settings.watch_interval_s):
            try:
                self.predictor.reload()
            except Exception:  # the watcher must outlive any one bad reload
                log.exception("model reload failed; the serving models are unchanged")
