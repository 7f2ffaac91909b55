"""Is a feature view in the online store at all? A bounded, sampled look, never a full scan.

For the server's start-up log and `materialize --incremental`, so an empty store (a new Redis,
a flushed one, the wrong database) is said out loud instead of served as "every feature
missing". A view is *present* when some key of its join keys (Feast's key prefix for them and
the project's suffix) holds the view's `_ts:<view>` field. SCAN walks at most `scan_budget`
keys; a view is reported absent only when none of the keys seen holds it, and the report says
whether the whole keyspace was seen or only a sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from serving.repo.plan import FeatureViewPlan
from serving.store import codec
from serving.store.online_store import OnlineStore

SCAN_BUDGET = 20_000  # keys looked at, at most, per check
SCAN_COUNT = 1_000
CHECKED_PER_VIEW = 32  # candidate keys asked for a view's `_ts` field, at most


@dataclass(frozen=True)
class Absence:
    view: str
    keys_seen: int
    whole_keyspace: bool  # False: only a sample was seen

    def describe(self) -> str:
        seen = (
            "in the whole store"
            if self.whole_keyspace
            else f"in a sample of {self.keys_seen:,} keys"
        )
        return f"feature view {self.view!r}: no key holds it ({seen})"


def absent_views(
    store: OnlineStore,
    views: Sequence[FeatureViewPlan],
    scan_budget: int = SCAN_BUDGET,
    key_version: int = 3,
) -> list[Absence]:
    """The views of `views` for which no stored key was found."""
    suffix = store.project.encode("utf-8")
    prefixes = {
        v.name: codec.entity_key_prefix([c.name for c in v.join_keys], key_version) for v in views
    }
    candidates: dict[str, list[bytes]] = {v.name: [] for v in views}
    found: set[str] = set()
    seen, complete = 0, True
    try:
        for client in store.connection.node_clients():  # a cluster: each master in turn
            cursor = None
            while cursor != 0 and seen < scan_budget and len(found) < len(views):
                cursor, keys = client.scan(cursor=cursor or 0, count=SCAN_COUNT)
                seen += len(keys)
                for key in keys:
                    if not key.endswith(suffix):
                        continue
                    for name, prefix in prefixes.items():
                        if name not in found and key.startswith(prefix):
                            candidates[name].append(key)
                found |= _holding(client, candidates)
            complete = complete and cursor == 0
    except redis.RedisError as exc:
        raise store.connection.unavailable(exc) from exc
    return [Absence(v.name, seen, complete) for v in views if v.name not in found]


def _holding(client: Any, candidates: dict[str, list[bytes]]) -> set[str]:
    """Views one of whose candidate keys holds their `_ts` field; their candidates are used up."""
    holding = set()
    pipe = client.pipeline(transaction=False)
    asked = []
    for view, keys in candidates.items():
        for key in keys[:CHECKED_PER_VIEW]:
            pipe.hexists(key, codec.ts_field(view))
            asked.append(view)
        keys.clear()
    for view, exists in zip(asked, pipe.execute() if asked else [], strict=True):
        if exists:
            holding.add(view)
    return holding
