"""gRPC handlers: protobuf <-> domain types, and the one table from errors to status codes.

Thin by design: each handler converts the request, calls the predictor, converts back. Every
handler runs inside `_guard`, so no RPC can leak a traceback or `str()` of an unexpected
exception to a client: those become INTERNAL with a generic message and go to the log.

With a prediction log (serving/monitoring/prediction_log.py), a sampled Predict hands its
reply's record to the log's bounded queue after the reply is built (never waiting), under the
caller's `x-request-id` metadata or a generated id, returned as trailing metadata.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from serving.errors import (
    CarraraError,
    DataError,
    InvalidRequestError,
    ModelError,
    NotFoundError,
    PermissionDeniedError,
    PlanError,
    StoreUnavailableError,
    UnsupportedError,
    echo,
)
from serving.ingest.push import PushTarget, push_columns
from serving.models.registry import DEFAULT_ALIAS
from serving.monitoring.prediction_log import REQUEST_ID_CHARS, PredictionRecord, PredictionTap
from serving.online.auth import permit_model, permitted
from serving.online.metrics import ServerMetrics
from serving.online.shadow import ShadowScorer
from serving.online.throttled_log import ThrottledLog
from serving.online.wire import feature_type, feature_values, read_columns, wire_type
from serving.pb.carrara.v1 import prediction_pb2 as pb
from serving.pb.carrara.v1 import prediction_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from serving.inference.served_model import Prediction
    from serving.online.predictor import Predictor, Route

log = logging.getLogger(__name__)

# Most specific class first; anything else is INTERNAL. A message of None sends the error's
# own text (it names the client's field, row, model or version); otherwise the fixed text is
# sent and the detail (URLs, paths) goes to the log only.
STATUS_OF: tuple[tuple[type[CarraraError], grpc.StatusCode, str | None], ...] = (
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT, None),
    (NotFoundError, grpc.StatusCode.NOT_FOUND, None),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED, None),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE, "the online store is unavailable"),
    (ModelError, grpc.StatusCode.FAILED_PRECONDITION, "this model version is broken on the server"),
    (UnsupportedError, grpc.StatusCode.FAILED_PRECONDITION, None),
)
INTERNAL = (grpc.StatusCode.INTERNAL, "internal error; see the server log")
# serving.store.reads.Status (MISSING 0, PRESENT 1, STALE 2) -> the wire's FeatureStatus
WIRE_STATUS = np.array([pb.MISSING, pb.PRESENT, pb.STALE], dtype=np.int32)
# Redis timeout: the client's remaining deadline, at most this. A cap, not only a default:
# a constant timeout spares a socket settimeout (two fcntl calls) per request, and a Redis
# read that takes a second is an outage to report, not to wait out.
MAX_REDIS_TIMEOUT_S = 1.0
MAX_DETAIL_CHARS = 1_000
SERVICE = "carrara.v1.PredictionService"
PUSH_MAX_ROWS = 100_000  # rows per Push: a write, larger than a prediction's batch
PUSH_TARGETS = {
    pb.PUSH_TARGET_UNSPECIFIED: PushTarget.ONLINE,
    pb.ONLINE: PushTarget.ONLINE,
    pb.OFFLINE: PushTarget.OFFLINE,
    pb.ONLINE_AND_OFFLINE: PushTarget.ONLINE_AND_OFFLINE,
}
STORE_KEY = "the online store"
REQUEST_ID_KEY = "x-request-id"  # metadata: the caller's id of a request, echoed when logged


class PredictionServicer(pb_grpc.PredictionServiceServicer):
    # Method names are grpc's (N802).
    def __init__(
        self,
        predictor: Predictor,
        metrics: ServerMetrics,
        max_rows: int,
        tap: PredictionTap | None = None,  # the prediction log; None: off
        shadows: ShadowScorer | None = None,  # shadow versions' scoring (needs the log)
    ) -> None:
        self._predictor = predictor
        self._metrics = metrics
        self._max_rows = max_rows
        self._tap = tap
        self._shadows = shadows
        self._throttled = ThrottledLog(log)

    def Predict(
        self, request: pb.PredictRequest, context: grpc.ServicerContext
    ) -> pb.PredictResponse:
        started = time.perf_counter()
        with self._guard(context, "Predict", request.model):
            permit_model(request.model)  # auth.py: the caller's token may call this model
            model = self._predictor.model(request.model)
            entities, rows = read_columns(
                "entities", request.entities, model.entities, self._max_rows
            )
            request_data, data_rows = read_columns(
                "request_data", request.request_data, model.request_fields, self._max_rows
            )
            if model.request_fields and data_rows != rows:
                raise InvalidRequestError(
                    f"request_data has {data_rows} rows but entities have {rows}"
                )
            route = self._predictor.route(request.model, model, entities)
            model = route.model  # a canary answers its share (same inputs, checked)
            result = model.predict(entities, request_data, rows, _timeout_s(context))
            if route.role == "canary" or route.alias == DEFAULT_ALIAS:
                self._metrics.count_routed(model.name, route.role, model.version)
            response = pb.PredictResponse(
                model=model.name,
                model_version=model.version,
                predictions=result.predictions.tolist(),
                missing_features=result.missing_per_row.tolist(),
                degraded=result.degraded,
            )
            if request.return_features:
                response.feature_names.extend(model.feature_names)
                response.features.extend(
                    pb.DoubleList(values=row) for row in result.features.tolist()
                )
            if self._tap is not None and self._tap.sampled():
                record = self._log(route, (entities, request_data), result, started, context)
                if route.shadow is not None and self._shadows is not None:
                    self._shadows.submit(route.shadow, record)  # scored after the reply
            return response
        return pb.PredictResponse()  # unreachable: _guard aborted the RPC

    def GetOnlineFeatures(
        self, request: pb.GetOnlineFeaturesRequest, context: grpc.ServicerContext
    ) -> pb.GetOnlineFeaturesResponse:
        with self._guard(context, "GetOnlineFeatures", request.feature_service or "refs"):
            if bool(request.feature_service) == bool(request.features):
                raise InvalidRequestError(
                    "give either feature_service or features, not both or none"
                )
            lookup = self._predictor.lookup(request.feature_service or None, list(request.features))
            entities, rows = read_columns(
                "entities", request.entities, lookup.entities, self._max_rows
            )
            request_data, data_rows = read_columns(
                "request_data", request.request_data, lookup.request_fields, self._max_rows
            )
            if lookup.request_fields and lookup.entities and data_rows != rows:
                raise InvalidRequestError(
                    f"request_data has {data_rows} rows but entities have {rows}"
                )
            rows = rows if lookup.entities else data_rows
            result = lookup.read(entities, request_data, rows, _timeout_s(context))
            response = pb.GetOnlineFeaturesResponse()
            for column in result:
                response.features.append(
                    pb.FeatureColumn(
                        name=column.name,
                        type=feature_type(column.dtype),
                        values=feature_values(column.values, column.dtype),
                        event_timestamps_us=column.event_timestamps_us.tolist(),
                        statuses=WIRE_STATUS[column.statuses].tolist(),
                        feast_type=column.dtype,
                    )
                )
            return response
        return pb.GetOnlineFeaturesResponse()

    def Push(self, request: pb.PushRequest, context: grpc.ServicerContext) -> pb.PushResponse:
        with self._guard(context, "Push", ""):  # auth.py: the token must grant `push`
            pusher = self._predictor.pusher()
            try:
                schema = push_columns(pusher.plan, request.push_source, request.columns)
            except PlanError as exc:
                raise NotFoundError(str(exc)) from None
            columns, _ = read_columns(
                "columns", request.columns, schema, PUSH_MAX_ROWS, "a column of this push source"
            )
            try:
                result = pusher.push(request.push_source, columns, PUSH_TARGETS[request.to])
            except DataError as exc:
                raise InvalidRequestError(str(exc)) from None
            for view, (at_us, event_us) in result.written_at_us.items():
                self._metrics.observe_freshness(view, ((at_us - e) / 1e6 for e in event_us))
            return pb.PushResponse(
                rows_written=result.rows_written,
                rows_older_than_stored=result.rows_older_than_stored,
            )
        return pb.PushResponse()

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        with self._guard(context, "ListModels", ""):
            return pb.ListModelsResponse(
                models=[
                    pb.ModelInfo(
                        name=info.name,
                        versions=info.versions,
                        aliases=info.aliases,
                        feature_service=info.feature_service,
                        entities=[
                            pb.Input(name=c.name, type=wire_type(c.dtype)) for c in info.entities
                        ],
                        request_data=[
                            pb.Input(name=c.name, type=wire_type(c.dtype))
                            for c in info.request_fields
                        ],
                    )
                    for info in self._predictor.model_infos()
                    if permitted(info.name)  # a limited token sees only its models
                ]
            )
        return pb.ListModelsResponse()

    def _log(
        self,
        route: Route,
        inputs: tuple[dict[str, list[Any]], dict[str, list[Any]]],
        result: Prediction,
        started: float,
        context: grpc.ServicerContext,
    ) -> PredictionRecord:
        """Hand the reply's record to the log's queue; the request id goes back as trailing
        metadata. References only: the writer's thread turns them into rows."""
        tap = self._tap
        assert tap is not None  # the caller checked
        model = route.model
        request_id = _request_id(context) or tap.ids.new()
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        record = PredictionRecord(
            request_id=request_id,
            time_s=time.time(),
            model=model.name,
            version=model.version,
            alias=route.alias,
            role=route.role,
            entities=inputs[0],
            request_data=inputs[1],
            feature_names=model.feature_names,
            features=result.features,
            predictions=result.predictions,
            missing=result.missing_per_row,
            degraded=result.degraded,
            latency_ms=(time.perf_counter() - started) * 1e3,
            status=result.status,
        )
        tap.offer(record)
        return record

    @contextmanager
    def _guard(self, context: grpc.ServicerContext, method: str, model: str) -> Iterator[None]:
        started = time.perf_counter()
        label = self._predictor.metric_label(model)  # never a raw client string: bounded labels
        try:
            yield
        except CarraraError as exc:
            code, public = next(((c, m) for k, c, m in STATUS_OF if isinstance(exc, k)), INTERNAL)
            detail = _cut(str(exc))
            key, recovers = _failure_key(code, method, label)
            self._throttled.warning(
                key,
                "%s model=%s status=%s error=%s",
                *(method, echo(model), code.name, detail),
                recovers=recovers,
            )
            self._metrics.observe(method, label, code.name, time.perf_counter() - started)
            if isinstance(exc, ModelError) and exc.ref:
                public = f"model version {exc.ref} is broken on the server; see its log"
            context.abort(code, public or detail)
        except Exception:
            log.exception("%s model=%s status=INTERNAL", method, echo(model))
            self._metrics.observe(method, label, "INTERNAL", time.perf_counter() - started)
            context.abort(*INTERNAL)
        else:
            self._metrics.observe(method, label, "OK", time.perf_counter() - started)
            if self._throttled.failing:
                self._throttled.ok(STORE_KEY)
                self._throttled.ok(f"{method} model={label}")


def add_to_server(servicer: PredictionServicer, server: grpc.Server) -> None:
    """Register the service like the generated `add_..._to_server`, except that requests
    arrive as bytes and are parsed here: bytes that are no valid message are INVALID_ARGUMENT
    (grpcio's own deserializer would answer INTERNAL, which alerts on server faults)."""
    methods: dict[str, tuple[Any, Any, Any]] = {
        "Predict": (servicer.Predict, pb.PredictRequest, pb.PredictResponse),
        "GetOnlineFeatures": (
            servicer.GetOnlineFeatures,
            pb.GetOnlineFeaturesRequest,
            pb.GetOnlineFeaturesResponse,
        ),
        "ListModels": (servicer.ListModels, pb.ListModelsRequest, pb.ListModelsResponse),
        "Push": (servicer.Push, pb.PushRequest, pb.PushResponse),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _parsing(request_type, method), response_serializer=reply_type.SerializeToString
        )
        for name, (method, request_type, reply_type) in methods.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def _parsing(request_type: Any, method: Callable[[Any, grpc.ServicerContext], Any]) -> Any:
    name = request_type.DESCRIPTOR.name

    def handle(data: bytes, context: grpc.ServicerContext) -> Any:
        try:
            request = request_type.FromString(data)
        except DecodeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is no valid {name}")
        return method(request, context)

    return handle


def _failure_key(code: grpc.StatusCode, method: str, label: str) -> tuple[str, bool]:
    """Failures logged together, and whether a success ends them: the store's for every call,
    a model's per method, and the callers' mistakes per method, model and code."""
    if code == grpc.StatusCode.UNAVAILABLE:
        return STORE_KEY, True
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return f"{method} model={label}", True
    return f"{method} model={label} {code.name}", False


def _request_id(context: grpc.ServicerContext) -> str | None:
    """The caller's `x-request-id` metadata (cut to REQUEST_ID_CHARS), if it sent one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and value:
            return str(value)[:REQUEST_ID_CHARS]
    return None


def _cut(text: str) -> str:
    """A status message or log detail of bounded size, whatever the error carried."""
    return text if len(text) <= MAX_DETAIL_CHARS else f"{text[:MAX_DETAIL_CHARS]}... (cut)"


def _timeout_s(context: grpc.ServicerContext) -> float:
    remaining: float | None = context.time_remaining()
    return (
        MAX_REDIS_TIMEOUT_S
        if remaining is None
        else max(0.001, min(remaining, MAX_REDIS_TIMEOUT_S))
    )
