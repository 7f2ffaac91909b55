"""Domain exceptions: what can go wrong, named without any transport or store in mind.

    CarraraError
    ├── UsageError            bad arguments or configuration (CLI exit 2)
    ├── PlanError             serving plan missing, stale or unreadable; repo cannot be resolved
    ├── DataError             input data (Parquet file, column, row) is wrong
    ├── InvalidRequestError   a request's field or row is wrong (gRPC INVALID_ARGUMENT)
    ├── NotFoundError         unknown model, alias, version, view or feature (gRPC NOT_FOUND)
    ├── PermissionDeniedError a caller's token may not call this (gRPC PERMISSION_DENIED)
    ├── ModelError            a model version is corrupt or does not fit the feature repo
    └── StoreUnavailableError the online store cannot be reached (gRPC UNAVAILABLE)

Boundaries translate: serving/store/connection.py maps redis errors to StoreUnavailableError,
serving/online/servicer.py maps these classes to gRPC status codes, serving/cli/main.py prints
the message as one line and exits non-zero.
Messages name the file, column, field, row or URL concerned, never a secret. A string that
came from a client is quoted through `echo`, which cuts it short: a request must not be able to
make a status or a log line as long as itself.
"""

ECHO_CHARS = 100


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """`repr(value)` for a message, cut to `limit` characters with the full length stated."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    shown = repr(text[:limit]) if isinstance(value, str) else text[:limit]
    return f"{shown}... ({len(text):,} characters)"


class CarraraError(Exception):
    """Base of every error Carrara raises on purpose."""


class UsageError(CarraraError):
    """Bad command-line arguments or settings."""


class UnsupportedError(UsageError):
    """What this deployment cannot do, said to the caller (e.g. windowed views on a Redis
    Cluster): gRPC FAILED_PRECONDITION with this message."""


class PlanError(CarraraError):
    """The serving plan is missing, stale or inconsistent with the feature repo."""


class DataError(CarraraError):
    """Input data is unreadable or disagrees with the declared schema."""


class InvalidRequestError(CarraraError):
    """A request names a wrong field, type or row."""


class NotFoundError(CarraraError):
    """An unknown model, alias, version, feature view or feature."""


class PermissionDeniedError(CarraraError):
    """A caller's credentials are valid but do not allow this model or method."""


class ModelError(CarraraError):
    """A model version is corrupt or incompatible with the feature repo.

    `ref` ("name:version"), when known, is what a client may be told; the message, which can
    name server paths, goes to the log."""

    def __init__(self, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.ref = ref


class StoreUnavailableError(CarraraError):
    """The online store (Redis) cannot be reached or timed out."""
