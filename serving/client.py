"""A small Python client for the prediction service: plain Python values in, plain out.

    with PredictionClient("127.0.0.1:50051") as client:
        reply = client.predict("eta", entities={"driver_id": [17]},
                               request_data={"pickup_lat": [44.07], ...})
        reply.predictions[0], reply.model_version

Columns are lists with one value per row; their wire type follows the Python type (int ->
int64, float -> double, str -> string, bool -> bool).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc

from serving.pb.carrara.v1 import prediction_pb2 as pb
from serving.pb.carrara.v1 import prediction_pb2_grpc as pb_grpc

Column = Sequence[int] | Sequence[float] | Sequence[str] | Sequence[bool]


def to_values(column: Column) -> pb.Values:
    values: list[Any] = list(column)
    if values and all(isinstance(v, bool) for v in values):
        return pb.Values(bool_values=pb.BoolList(values=values))
    if values and all(isinstance(v, int) for v in values):
        return pb.Values(int64_values=pb.Int64List(values=values))
    if values and all(isinstance(v, str) for v in values):
        return pb.Values(string_values=pb.StringList(values=values))
    return pb.Values(double_values=pb.DoubleList(values=[float(v) for v in values]))


class PredictionClient:
    def __init__(self, target: str, timeout_s: float = 5.0) -> None:
        self._channel = grpc.insecure_channel(target)
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
        response: pb.PredictResponse = self._stub.Predict(request, timeout=self._timeout_s)
        return response

    def online_features(
        self,
        entities: Mapping[str, Column],
        feature_service: str = "",
        features: Sequence[str] = (),
    ) -> pb.GetOnlineFeaturesResponse:
        request = pb.GetOnlineFeaturesRequest(
            feature_service=feature_service,
            features=list(features),
            entities={k: to_values(v) for k, v in entities.items()},
        )
        response: pb.GetOnlineFeaturesResponse = self._stub.GetOnlineFeatures(
            request, timeout=self._timeout_s
        )
        return response

    def list_models(self) -> pb.ListModelsResponse:
        response: pb.ListModelsResponse = self._stub.ListModels(
            pb.ListModelsRequest(), timeout=self._timeout_s
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
