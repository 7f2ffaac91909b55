"""The online store: Feast's Redis layout for one project, read and written.

What the rest of Carrara holds: one object per Redis and project, thread-safe, that reads
(reads.py: one round trip per request) and writes (writes.py: Feast's newer-than-stored guard)
over one connection (connection.py). With `feature_cache_entries`, reads go through a coherent
in-process cache (feature_cache.py) first; writes never do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from serving.store import reads, writes
from serving.store.connection import READ_TIMEOUT_S, KeyedReader, connect
from serving.store.feature_cache import FeatureCache, Listened
from serving.store.read_plan import ReadPlan
from serving.store.reads import OnlineRead, RawRead
from serving.store.settings import RedisSettings
from serving.store.write_guard import FramedRows, RowBatch
from serving.store.writes import WRITE_TIMEOUT_S, WriteCounts

log = logging.getLogger(__name__)


class OnlineStore:
    def __init__(
        self, settings: RedisSettings, project: str, feature_cache_entries: int = 0
    ) -> None:
        self.settings = settings
        self.project = project
        self.connection = connect(settings)
        self.cache = _feature_cache(self.connection, settings, feature_cache_entries)
        self._reader: KeyedReader = self.cache or self.connection

    def ping(self, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.connection.ping(timeout_s)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        self.connection.close()

    def read(
        self,
        plan: ReadPlan,
        entities: Mapping[str, Sequence[Any]],
        now_s: float | None = None,
        timeout_s: float | None = None,
    ) -> OnlineRead:
        """The plan's feature matrix for the entity rows: one round trip, decoded to float64."""
        return reads.read(self._reader, plan, entities, now_s, timeout_s)

    def read_raw(
        self,
        plan: ReadPlan,
        entities: Mapping[str, Sequence[Any]],
        now_s: float | None = None,
        timeout_s: float | None = None,
    ) -> RawRead:
        """Every feature of the plan as a Python value, any dtype (GetOnlineFeatures)."""
        return reads.read_raw(self._reader, plan, entities, now_s, timeout_s)

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


def _feature_cache(connection: Any, settings: RedisSettings, entries: int) -> FeatureCache | None:
    if entries <= 0:
        return None
    if settings.key_ttl_s:  # Redis expires keys lazily: its invalidation may come late
        log.warning(
            "feature cache off: key_ttl_seconds is set, and Redis may notice an expired key "
            "only when it is read; every read goes to Redis"
        )
        return None
    listened: Listened = connection
    return FeatureCache(listened, entries)
