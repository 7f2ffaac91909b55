"""Domain exceptions: what can go wrong, named without any transport or store in mind.

    CarraraError
    ├── UsageError            bad arguments or configuration (CLI exit 2)
    ├── PlanError             serving plan missing, stale or unreadable; repo cannot be resolved
    ├── DataError             input data (Parquet file, column, row) is wrong
    ├── InvalidRequestError   a request's field or row is wrong (gRPC INVALID_ARGUMENT)
    ├── NotFoundError         unknown model, alias, version, view or feature (gRPC NOT_FOUND)
    ├── ModelError            a model version is corrupt or does not fit the feature repo
    └── StoreUnavailableError the online store cannot be reached (gRPC UNAVAILABLE)

Boundaries translate: `online_store` maps redis errors to StoreUnavailableError, `servicer` maps
these classes to gRPC status codes, `cli` prints the message as one line and exits non-zero.
Messages name the file, column, field, row or URL concerned, never a secret.
"""


class CarraraError(Exception):
    """Base of every error Carrara raises on purpose."""


class UsageError(CarraraError):
    """Bad command-line arguments or settings."""


class PlanError(CarraraError):
    """The serving plan is missing, stale or inconsistent with the feature repo."""


class DataError(CarraraError):
    """Input data is unreadable or disagrees with the declared schema."""


class InvalidRequestError(CarraraError):
    """A request names a wrong field, type or row."""


class NotFoundError(CarraraError):
    """An unknown model, alias, version, feature view or feature."""


class ModelError(CarraraError):
    """A model version is corrupt or incompatible with the feature repo."""


class StoreUnavailableError(CarraraError):
    """The online store (Redis) cannot be reached or timed out."""
