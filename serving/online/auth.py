"""Who may call what: the bearer-token interceptor, and the grant the servicer consults.

With `--auth-tokens FILE` every RPC but the health service's needs `authorization: Bearer
<token>` metadata naming a token of the file (tokens.py), else UNAUTHENTICATED. What a valid
token may then do:
- Predict: a model its line lists (the name part of "eta", "eta@staging", "eta:3"), else
  PERMISSION_DENIED. Checked before the model is resolved, so a limited token cannot learn
  which models exist.
- ListModels: any token; a limited one sees only the models it may call.
- GetOnlineFeatures: a token whose line lists `features` (raw feature values are data a
  model-limited caller has no use for); Push: `push`.
- Server reflection: any token.
- Health: everyone, with or without a token (probes carry none).

Mechanics: the interceptor wraps each method's behavior (the wrapper runs in the RPC's pool
thread, where the handler runs), authenticates, and sets `GRANT` for the handler; the model
is known only once the servicer has parsed the request, so the servicer asks
`permit_model` / `permitted`. Without tokens there is no interceptor and `GRANT` stays
EVERYTHING. Rejections are logged throttled (method, code, peer; never the token) and
counted in the request metrics with model "".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, NoReturn

import grpc

from serving.errors import PermissionDeniedError, echo
from serving.online.metrics import ServerMetrics
from serving.online.throttled_log import ThrottledLog
from serving.online.tokens import EVERYTHING, FEATURES, PUSH, Grant, TokenTable

log = logging.getLogger(__name__)

GRANT: ContextVar[Grant] = ContextVar("carrara_grant", default=EVERYTHING)
OPEN_SERVICES = ("/grpc.health.v1.Health/",)  # probes carry no token
NEEDS: dict[str, str] = {  # method -> the name a limited token's line must list
    "/carrara.v1.PredictionService/GetOnlineFeatures": FEATURES,
    "/carrara.v1.PredictionService/Push": PUSH,
}
MISSING = "this server requires `authorization: Bearer <token>` metadata"
NOT_BEARER = "the authorization metadata is not `Bearer <token>`"
UNKNOWN = "the bearer token is not one this server accepts"


def permit_model(ref: str) -> None:
    """PermissionDeniedError unless the caller's token may call the model `ref` names."""
    name = ref.partition("@")[0].partition(":")[0]
    if not GRANT.get().allows(name):
        raise PermissionDeniedError(f"this token may not call model {echo(name)}")


def permitted(name: str) -> bool:
    """Whether the caller's token may call model `name` (ListModels shows only those)."""
    return GRANT.get().allows(name)


class TokenInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, tokens: TokenTable, metrics: ServerMetrics) -> None:
        self._tokens = tokens
        self._metrics = metrics
        self._throttled = ThrottledLog(log)
        self._wrapped: dict[str, tuple[Any, Any]] = {}  # method -> (handler, its wrapper)

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        method: str = details.method
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapper = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapper)
        return wrapper

    def _wrap(self, handler: Any, method: str) -> Any:
        short = method.rpartition("/")[2]
        needs = NEEDS.get(method)

        def guarded(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Any:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                grant = self._authenticate(context, short, needs)
                if handler.response_streaming:  # reflection: needs a token, not a grant
                    return behavior(request, context)
                reset = GRANT.set(grant)
                try:
                    return behavior(request, context)
                finally:
                    GRANT.reset(reset)

            return call

        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        )
        for attribute, build in kinds:
            behavior = getattr(handler, attribute)
            if behavior is not None:
                return build(
                    guarded(behavior),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler

    def _authenticate(self, context: grpc.ServicerContext, method: str, needs: str | None) -> Grant:
        started = time.perf_counter()
        value = next((v for k, v in context.invocation_metadata() if k == "authorization"), None)
        if value is None:
            self._refuse(context, method, grpc.StatusCode.UNAUTHENTICATED, MISSING, started)
        scheme, _, token = str(value).partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self._refuse(context, method, grpc.StatusCode.UNAUTHENTICATED, NOT_BEARER, started)
        grant = self._tokens.grant(token)
        if grant is None:
            self._refuse(context, method, grpc.StatusCode.UNAUTHENTICATED, UNKNOWN, started)
        if needs is not None and not grant.allows(needs):
            message = f"this token may not call {method} (its line lists no `{needs}`)"
            self._refuse(context, method, grpc.StatusCode.PERMISSION_DENIED, message, started)
        return grant

    def _refuse(
        self,
        context: grpc.ServicerContext,
        method: str,
        code: grpc.StatusCode,
        message: str,
        started: float,
    ) -> NoReturn:
        self._throttled.warning(
            f"{method} {code.name}",
            "%s status=%s peer=%s: %s",
            *(method, code.name, context.peer(), message),
            recovers=False,
        )
        self._metrics.observe(method, "", code.name, time.perf_counter() - started)
        context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")
