"""A small Python client for the prediction service: plain Python values in, plain out.

    with PredictionClient("127.0.0.1:50051") as client:
        reply = client.predict("eta", entities={"driver_id": [17]},
                               request_data={"pickup_lat": [44.07], ...})
        reply.predictions[0], reply.model_version

Columns are lists with one value per row; their wire type follows the Python type (int ->
int64, float -> double, str -> string, bool -> bool).

A server with TLS, mutual TLS or bearer tokens takes `ClientCredentials` (every secret from
a file; a bad file is a UsageError naming it, at construction):

    ClientCredentials(tls=TLSFiles(ca=Path("ca.pem")), token_file=Path("token"))
    ClientCredentials(tls=TLSFiles(ca=..., cert=Path("me.pem"), key=Path("me.key")))  # mTLS
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from serving.credentials import TLSFiles, load_tls, read_token
from serving.pb.carrara.v1 import prediction_pb2 as pb
from serving.pb.carrara.v1 import prediction_pb2_grpc as pb_grpc

Column = Sequence[int] | Sequence[float] | Sequence[str] | Sequence[bool] | Sequence[Any]


def to_values(column: Column) -> pb.Values:
    values: list[Any] = list(column)
    if any(isinstance(v, dict | list | tuple | bytes) for v in values):
        if all(isinstance(v, bytes) for v in values):
            return pb.Values(bytes_values=pb.BytesList(values=values))
        return pb.Values(nested_values=pb.ValueList(values=[value_message(v) for v in values]))
    if values and all(isinstance(v, bool) for v in values):
        return pb.Values(bool_values=pb.BoolList(values=values))
    if values and all(isinstance(v, int) for v in values):
        return pb.Values(int64_values=pb.Int64List(values=values))
    if values and all(isinstance(v, str) for v in values):
        return pb.Values(string_values=pb.StringList(values=values))
    return pb.Values(double_values=pb.DoubleList(values=[float(v) for v in values]))


def python_values(column: pb.FeatureColumn) -> list[Any]:
    """A GetOnlineFeatures column as Python values, None where not PRESENT (as Feast's
    `to_dict()` gives them): maps and structs as dicts, lists and sets as lists, json parsed."""
    kind = column.values.WhichOneof("kind")
    values = list(getattr(column.values, kind).values) if kind else []
    if kind == "nested_values":
        values = [python_value(v) for v in values]
    return [
        v if status == pb.PRESENT else None
        for v, status in zip(values, column.statuses, strict=True)
    ]


def value_message(value: object) -> pb.Value:
    """One nested value: dicts as maps, lists (and sets, tuples) as lists, None unset."""
    if value is None:
        return pb.Value()
    if isinstance(value, bool):
        return pb.Value(bool_value=value)
    if isinstance(value, int):
        return pb.Value(int64_value=value)
    if isinstance(value, float):
        return pb.Value(double_value=value)
    if isinstance(value, str):
        return pb.Value(string_value=value)
    if isinstance(value, bytes):
        return pb.Value(bytes_value=value)
    if isinstance(value, dict):
        fields = {str(k): value_message(v) for k, v in value.items()}
        return pb.Value(map_value=pb.ValueMap(fields=fields))
    if isinstance(value, list | tuple | set | frozenset):
        return pb.Value(list_value=pb.ValueList(values=[value_message(v) for v in value]))
    return pb.Value(string_value=str(value))  # Decimal, UUID: their text


def python_value(value: pb.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "list_value":
        return [python_value(v) for v in value.list_value.values]
    if kind == "map_value":
        return {k: python_value(v) for k, v in value.map_value.fields.items()}
    return getattr(value, kind)


@dataclass(frozen=True)
class ClientCredentials:
    """How a client connects: over TLS when `tls` is given (its `ca` verifies the server,
    None: the system's roots; its `cert` and `key` answer a server that asks for a client
    certificate), sending the bearer token in `token_file` (first line) when given."""

    tls: TLSFiles | None = None
    token_file: Path | None = None


class PredictionClient:
    def __init__(
        self, target: str, timeout_s: float = 5.0, credentials: ClientCredentials | None = None
    ) -> None:
        credentials = credentials or ClientCredentials()
        token = read_token(credentials.token_file) if credentials.token_file else None
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._channel = _channel(target, credentials.tls)
        self._stub = pb_grpc.PredictionServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._timeout_s = timeout_s

    def predict(
        self,
        model: str,
        entities: Mapping[str, Column],
        request_data: Mapping[str, Column] | None = None,
        return_features: bool = False,
    ) -> pb.PredictResponse:
        request = pb.PredictRequest(
            model=model,
            entities={k: to_values(v) for k, v in entities.items()},
            request_data={k: to_values(v) for k, v in (request_data or {}).items()},
            return_features=return_features,
        )
        response: pb.PredictResponse = self._stub.Predict(
            request, timeout=self._timeout_s, metadata=self._metadata
        )
        return response

    def online_features(
        self,
        entities: Mapping[str, Column],
        feature_service: str = "",
        features: Sequence[str] = (),
        request_data: Mapping[str, Column] | None = None,
    ) -> pb.GetOnlineFeaturesResponse:
        request = pb.GetOnlineFeaturesRequest(
            feature_service=feature_service,
            features=list(features),
            entities={k: to_values(v) for k, v in entities.items()},
            request_data={k: to_values(v) for k, v in (request_data or {}).items()},
        )
        response: pb.GetOnlineFeaturesResponse = self._stub.GetOnlineFeatures(
            request, timeout=self._timeout_s, metadata=self._metadata
        )
        return response

    def push(
        self, push_source: str, columns: Mapping[str, Column], to: int = pb.ONLINE
    ) -> pb.PushResponse:
        """Rows for a push source (its timestamp field as int64 UTC microseconds)."""
        request = pb.PushRequest(
            push_source=push_source,
            columns={k: to_values(v) for k, v in columns.items()},
            to=to,  # type: ignore[arg-type]
        )
        response: pb.PushResponse = self._stub.Push(
            request, timeout=self._timeout_s, metadata=self._metadata
        )
        return response

    def list_models(self) -> pb.ListModelsResponse:
        response: pb.ListModelsResponse = self._stub.ListModels(
            pb.ListModelsRequest(), timeout=self._timeout_s, metadata=self._metadata
        )
        return response

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PredictionClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _channel(target: str, tls: TLSFiles | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target)
    pem = load_tls(tls)
    return grpc.secure_channel(
        target,
        grpc.ssl_channel_credentials(
            root_certificates=pem.ca, private_key=pem.key, certificate_chain=pem.cert
        ),
    )
