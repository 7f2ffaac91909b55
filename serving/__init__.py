"""Carrara: a feature store and LightGBM prediction server on Feast's Redis layout.

The public surface for code outside this package: `PredictionClient` (a gRPC client),
`load_scorer` (a model.txt -> the server's exact scores for a matrix) and the domain errors.
Imported lazily, so `import serving` costs nothing.

The layers, top to bottom (enforced by import-linter, see pyproject.toml):

    cli                                the `carrara` command
    sample                             the sample world and the demo
    online | batch | training          the gRPC service; batch jobs; training
    inference                          a model version resolved for scoring (both above)
    models | store | client            registry and scorer; Feast's Redis layout; gRPC client
    repo                               the Feast repository -> serving plan
    credentials                        TLS files and bearer tokens, read and checked
    errors, files, ports, progress, pb
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serving.errors import (
    CarraraError,
    DataError,
    InvalidRequestError,
    ModelError,
    NotFoundError,
    PlanError,
    StoreUnavailableError,
    UsageError,
)

if TYPE_CHECKING:
    from serving.client import PredictionClient
    from serving.models.scorer import load_scorer

__all__ = [
    "CarraraError",
    "DataError",
    "InvalidRequestError",
    "ModelError",
    "NotFoundError",
    "PlanError",
    "PredictionClient",
    "StoreUnavailableError",
    "UsageError",
    "load_scorer",
]


def __getattr__(name: str) -> Any:
    if name == "PredictionClient":
        from serving.client import PredictionClient

        return PredictionClient
    if name == "load_scorer":
        from serving.models.scorer import load_scorer

        return load_scorer
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
