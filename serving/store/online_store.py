"""The online store: Feast's Redis layout for one project, read and written.

What the rest of Carrara holds: one object per Redis and project, thread-safe, that reads
(reads.py: one round trip per request) and writes (writes.py: Feast's newer-than-stored guard)
over one connection (connection.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from serving.store import reads, writes
from serving.store.connection import READ_TIMEOUT_S, connect
from serving.store.read_plan import ReadPlan
from serving.store.reads import OnlineRead, RawRead
from serving.store.settings import RedisSettings
from serving.store.write_guard import FramedRows, RowBatch
from serving.store.writes import WRITE_TIMEOUT_S, WriteCounts


class OnlineStore:
    def __init__(self, settings: RedisSettings, project: str) -> None:
        self.settings = settings
        self.project = project
        self.connection = connect(settings)

    def ping(self, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.connection.ping(timeout_s)

    def close(self) -> None:
        self.connection.close()

    def read(
        self,
        plan: ReadPlan,
        entities: Mapping[str, Sequence[Any]],
        now_s: float | None = None,
        timeout_s: float | None = None,
    ) -> OnlineRead:
        """The plan's feature matrix for the entity rows: one round trip, decoded to float64."""
        return reads.read(self.connection, plan, entities, now_s, timeout_s)

    def read_raw(
        self,
        plan: ReadPlan,
        entities: Mapping[str, Sequence[Any]],
        now_s: float | None = None,
        timeout_s: float | None = None,
    ) -> RawRead:
        """Every feature of the plan as a Python value, any dtype (GetOnlineFeatures)."""
        return reads.read_raw(self.connection, plan, entities, now_s, timeout_s)

    def write_view(
        self,
        view: str,
        features: Sequence[str],
        batches: Iterable[RowBatch | FramedRows],
        on_batch: Callable[[int, int], None] | None = None,
        timeout_s: float = WRITE_TIMEOUT_S,
    ) -> WriteCounts:
        """Write one view's rows, each only when newer than what is stored (writes.py)."""
        return writes.write_view(self.connection, view, features, batches, on_batch, timeout_s)
