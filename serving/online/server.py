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

Security (all off by default): TLS from `ServerSettings.tls` (with its `ca`, mutual TLS:
clients must present a certificate that CA signed); bearer tokens from a file
(`auth_tokens`, see auth.py and tokens.py), re-read by a third watcher when it changes.
Certificates and the tokens file are checked before anything else is built (`check_security`),
so a bad one is one line at start-up. The health service stays open to probes; reflection can
be turned off, and the metrics endpoint (plain HTTP) binds its own host.

Watching what is served (off by default): `prediction_log` writes a record per scored row
(serving/monitoring/parquet_log.py) and `drift_window_rows` keeps the latest served feature
vectors per model version for PSI gauges (drift.py); both are fed by one `PredictionTap`, a
bounded queue the servicer hands records to and a thread of its own drains. The Parquet
writer is the one module of the server that imports pyarrow, and only when a log is asked
for (the exception is named in pyproject.toml's request-path contract).
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

from serving.credentials import TLSFiles, load_tls
from serving.errors import CarraraError, StoreUnavailableError, UsageError
from serving.inference.served_model import StoreFallback
from serving.ingest.windows import WindowWriter
from serving.models.card import ModelCard
from serving.models.registry import ModelRegistry
from serving.monitoring.drift import DriftWindows
from serving.monitoring.prediction_log import PredictionTap, RecordConsumer
from serving.online.auth import TokenInterceptor
from serving.online.metrics import ServerMetrics
from serving.online.predictor import Predictor
from serving.online.servicer import PredictionServicer, add_to_server
from serving.online.shadow import ShadowScorer
from serving.online.tokens import TokenTable
from serving.pb.carrara.v1 import prediction_pb2 as pb
from serving.repo.plan import FeatureViewPlan, RepoFiles, load_plan
from serving.store.connection import RedisConnection
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
    tls: TLSFiles | None = None  # cert + key: TLS; with ca: clients need a cert it signed
    auth_tokens: Path | None = None  # the tokens file (auth.py); None: no token needed
    reflection: bool = True
    metrics_host: str | None = None  # None: `host`
    # models scored with their stored features missing when the online store is down or
    # slower than store_budget_ms (the reply says `degraded`); the others fail UNAVAILABLE
    score_without_store: frozenset[str] = frozenset()
    store_budget_ms: float | None = None
    feature_cache_entries: int = 0  # Redis keys cached in process (feature_cache.py); 0: off
    max_future_skew_s: float = 300.0  # a pushed event may be this far ahead of the clock
    prediction_log: Path | None = None  # the prediction log's folder; None: no log
    log_sample_rate: float = 1.0  # share of Predict calls logged (and fed to drift)
    log_retention_hours: float | None = None  # hour partitions kept; None: all
    drift_window_rows: int = 0  # served rows per model version kept for PSI; 0: no drift


class Server:
    def __init__(self, settings: ServerSettings) -> None:
        started = time.perf_counter()
        self.settings = settings
        self._credentials = server_credentials(settings.tls)
        self.tokens = TokenTable(settings.auth_tokens) if settings.auth_tokens else None
        plan = load_plan(RepoFiles.locate(settings.repo))  # the command compiled a stale one
        self.metrics = ServerMetrics()
        self.tap = _prediction_tap(settings, self.metrics)  # before the store: refused first
        # shadow versions are scored only to be logged: with the log on
        self.shadows = ShadowScorer(self.tap, self.metrics) if self.tap is not None else None
        self.store = OnlineStore(
            redis_settings(settings.repo, settings.redis_url),
            plan.project,
            feature_cache_entries=settings.feature_cache_entries,
        )
        if self.store.cache is not None:
            self.metrics.watch_feature_cache(self.store.cache.stats)
        self.predictor = Predictor(
            plan,
            settings.repo,
            self.store,
            ModelRegistry(settings.registry),
            self.metrics,
            fallbacks=_fallbacks(settings),
            max_future_skew_s=settings.max_future_skew_s,
        )
        try:
            self.predictor.load_all()
        except BaseException:
            self.store.close()
            raise
        for name in self.predictor.model_names():
            if not self.predictor.serves(name):
                log.error("model %s is NOT_SERVING (see above); the other models are served", name)
        self._check_tokens()
        self.health = health.HealthServicer()
        self._grpc = grpc.server(
            ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="carrara-rpc"),
            interceptors=[TokenInterceptor(self.tokens, self.metrics)] if self.tokens else None,
            options=[("grpc.so_reuseport", int(settings.reuse_port))],
        )
        add_to_server(
            PredictionServicer(
                self.predictor, self.metrics, settings.max_rows, self.tap, self.shadows
            ),
            self._grpc,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        if settings.reflection:
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
            self.port = (
                self._grpc.add_secure_port(address, self._credentials)
                if self._credentials
                else self._grpc.add_insecure_port(address)
            )
        except RuntimeError as exc:  # grpc's "Failed to bind": the port is taken or the host bad
            raise UsageError(f"cannot listen on {address}: port in use or bad host") from exc
        self._grpc.start()
        if self.settings.metrics_port is not None:
            metrics_host = self.settings.metrics_host or self.settings.host
            try:
                self.metrics_port = self.metrics.serve(metrics_host, self.settings.metrics_port)
            except OSError as exc:
                self._grpc.stop(0)
                raise UsageError(
                    f"cannot serve metrics on {metrics_host}:{self.settings.metrics_port}: "
                    f"{exc.strerror}"
                ) from exc
        if self._check_health():
            self._report_absent_views()
        if self.tap is not None:
            self.tap.start()
        if self.shadows is not None:
            self.shadows.start()
        watchers = [(self._watch_health, "health"), (self._watch_models, "reload")]
        if self.tokens is not None:
            watchers.append((self._watch_tokens, "tokens"))
        if self._windowed_views():
            watchers.append((self._age_windows, "windows"))
        for target, name in watchers:
            thread = threading.Thread(target=target, name=f"carrara-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self.port

    def _windowed_views(self) -> list[FeatureViewPlan]:
        """Windowed views this server ages (one Redis server: a cluster cannot keep them)."""
        if not isinstance(self.store.connection, RedisConnection):
            return []
        return [v for v in self.predictor.plan.feature_views.values() if v.windowed]

    def _age_windows(self) -> None:
        """Windows change when time passes, pushed to or not: tick them (windows.py)."""
        WindowWriter(self.predictor.plan, self.store).age(self._windowed_views(), self._stop)

    def stop(self, grace_s: float = 2.0) -> None:
        self._stop.set()
        self._grpc.stop(grace_s).wait()
        if self.shadows is not None:
            self.shadows.close()  # before the log: their records are logged too
        if self.tap is not None:
            self.tap.close()  # after the last reply: every logged record is written
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
            version = self.predictor.plan.entity_key_serialization_version
            absent = absent_views(self.store, views, key_version=version)
        except StoreUnavailableError as exc:
            log.warning("could not check the online store for served views: %s", exc)
            return
        windowed = {v.name for v in views if v.windowed}
        for absence in absent:
            writer = (
                "events are pushed to it"
                if absence.view in windowed
                else ("`carrara materialize` writes it")
            )
            log.warning(
                "%s; its features are served as missing until %s", absence.describe(), writer
            )
        if views and not absent:
            log.info("the online store holds every served feature view (%d)", len(views))

    def _watch_health(self) -> None:
        while not self._stop.wait(self.settings.watch_interval_s):
            self._check_health()

    def _check_tokens(self) -> None:
        if self.tokens is None:
            return
        if self._credentials is None:
            log.warning(
                "bearer tokens travel in clear text without --tls-cert/--tls-key; "
                "serve TLS unless a TLS proxy in front of this server terminates it"
            )
        for line in self.tokens.unknown_names(set(self.predictor.model_names())):
            log.warning(
                "tokens file %s line %d lists a name that is no served model, `push` or "
                "`features`: a typo?",
                *(self.tokens.path, line),
            )

    def _watch_tokens(self) -> None:
        tokens = self.tokens
        while tokens is not None and not self._stop.wait(self.settings.watch_interval_s):
            try:
                tokens.reload()
            except Exception:  # the watcher must outlive any one bad reload
                log.exception("tokens reload failed; the tokens loaded before stay in force")

    def _watch_models(self) -> None:
        while not self._stop.wait(self.settings.watch_interval_s):
            try:
                self.predictor.reload()
            except Exception:  # the watcher must outlive any one bad reload
                log.exception("model reload failed; the serving models are unchanged")


def server_credentials(tls: TLSFiles | None) -> grpc.ServerCredentials | None:
    """grpc's credentials for `tls` (None: plaintext); UsageError naming a bad file."""
    if tls is None:
        return None
    if tls.cert is None and tls.key is None:
        raise UsageError("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS first")
    pem = load_tls(tls)
    return grpc.ssl_server_credentials(
        [(pem.key, pem.cert)], root_certificates=pem.ca, require_client_auth=pem.ca is not None
    )


def check_security(settings: ServerSettings) -> None:
    """Load the TLS files and the tokens file as a server would: UsageError if one is bad.
    For a command to fail in one line before it starts server processes."""
    server_credentials(settings.tls)
    if settings.auth_tokens is not None:
        TokenTable(settings.auth_tokens)


def _fallbacks(settings: ServerSettings) -> dict[str, StoreFallback]:
    budget_s = None if settings.store_budget_ms is None else settings.store_budget_ms / 1000
    return {
        name: StoreFallback(score_without_store=True, budget_s=budget_s)
        for name in settings.score_without_store
    }


def _prediction_tap(settings: ServerSettings, metrics: ServerMetrics) -> PredictionTap | None:
    """The prediction log and the drift windows, fed by one tap; None when both are off."""
    consumers: list[RecordConsumer] = []
    if settings.prediction_log is not None:
        # pyarrow, imported here only: see the module docstring
        from serving.monitoring.parquet_log import LogSettings, ParquetLog

        log_settings = LogSettings(settings.prediction_log, settings.log_retention_hours)
        consumers.append(ParquetLog(log_settings, metrics.count_log_dropped))
    if settings.drift_window_rows > 0:
        registry = ModelRegistry(settings.registry)
        windows = DriftWindows(
            settings.drift_window_rows, lambda name, version: _card(registry, name, version)
        )
        metrics.watch_drift(windows.psi)
        consumers.append(windows)
    if not consumers:
        return None
    return PredictionTap(consumers, metrics.count_log_dropped, settings.log_sample_rate)


def _card(registry: ModelRegistry, name: str, version: str) -> ModelCard | None:
    try:
        return registry.card(f"{name}:{version}")
    except CarraraError as exc:
        log.warning("drift of %s:%s not measured: %s", name, version, exc)
        return None
