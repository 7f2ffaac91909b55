"""Redis Cluster: the same key bytes as Feast, each key on the master that owns its slot.

redis-py's `RedisCluster` discovers the topology (slots -> masters) and keeps it; the reads and
writes themselves go over the thread's own raw link to each master (connection.py's `Link`):
the commands of a request are grouped by master, every group is sent before any reply is read,
so the masters work in parallel and a request costs about one round trip however many masters
it touches.

- MOVED (a slot moved for good): the command is sent again to the named node, and the topology
  is refreshed before the next request. ASK (a slot being migrated): ASKING plus the command
  to the named node, this once.
- A master that cannot be reached (killed, failing over): the topology is refreshed and the
  exchange tried once more; if it still fails the store is unavailable (UNAVAILABLE to a
  caller) until a replica is promoted, after which requests succeed with no manual step.
- Writes use the same exchange, one guarded EVALSHA per key (a script's keys must share a
  slot, and Feast's keys have no hash tags), so each key is still written atomically.
"""

from __future__ import annotations

import contextlib
import threading
from binascii import crc_hqx
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis
from redis import cluster as redis_cluster
from redis.crc import key_slot  # hash tags; plain keys hash inline: ~3x faster

from serving.errors import StoreUnavailableError, UsageError
from serving.store.connection import READ_TIMEOUT_S, Link, describe_error
from serving.store.per_thread import PerThread
from serving.store.settings import RedisSettings

ASKING = b"*1\r\n$6\r\nASKING\r\n"
SLOTS = 16384
REFRESH_ATTEMPTS = 2  # exchanges tried, a topology refresh between them
# redis-py's cluster API is untyped
ClusterNode: Any = redis_cluster.ClusterNode
RedisCluster: Any = redis_cluster.RedisCluster
# redis-py raises RedisClusterException, no RedisError, when no start-up node answers
CLUSTER_ERRORS = (redis.RedisError, redis.exceptions.RedisClusterException)


class ClusterConnection:
    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self._kwargs = settings.connection_kwargs() | {
            "socket_timeout": READ_TIMEOUT_S,
            "socket_connect_timeout": READ_TIMEOUT_S,
        }
        self._cluster: Any = None  # made on first use: a server starts while Redis is down
        self._lock = threading.Lock()
        self._slot_nodes: list[str | None] = []
        self._stale = True
        self._links: PerThread[dict[str, Link]] = PerThread(dict)
        # bumped by each slot-table refresh and redirect: the feature cache keeps no reply
        # read across a change, and re-subscribes its invalidations when the masters change
        self.topology = 0
        # unreachable now: said by the first request (UNAVAILABLE) and by the health check
        with contextlib.suppress(StoreUnavailableError):
            self._refresh_slots()

    def ping(self, timeout_s: float = READ_TIMEOUT_S) -> None:
        if self._stale:
            self._refresh_slots()
        try:
            for node in self._cluster.get_primaries():
                self._link(node.name).exchange(b"*1\r\n$4\r\nPING\r\n", 1, timeout_s)
        except redis.RedisError as exc:
            self._stale = True
            raise self.unavailable(exc) from exc

    def close(self) -> None:
        for links in self._links.every():
            for link in links.values():
                link.close()
        if self._cluster is not None:
            self._cluster.close()

    def exchange_keyed(
        self, keys: Sequence[bytes], commands: Sequence[bytes], timeout_s: float
    ) -> list[Any]:
        if not commands:
            return []
        for attempt in range(REFRESH_ATTEMPTS):
            if self._stale:
                self._refresh_slots()
            try:
                return self._exchange_once(keys, commands, timeout_s)
            except (redis.ConnectionError, redis.TimeoutError, StoreUnavailableError) as exc:
                self._stale = True
                if attempt == REFRESH_ATTEMPTS - 1:
                    raise self.unavailable(exc) from exc
            except redis.ResponseError as exc:
                if "NOSCRIPT" in str(exc):  # the writer loads its script and sends again
                    raise
                raise self.unavailable(exc) from exc  # as on one server: never a raw error
        raise AssertionError("unreachable")

    def node_clients(self) -> list[Any]:
        if self._stale:
            self._refresh_slots()
        return [self._cluster.get_redis_connection(n) for n in self._cluster.get_primaries()]

    def invalidation_sources(self) -> dict[str, Callable[[], Any]]:
        """Every master serving a slot, and a maker of connections to it (feature_cache.py)."""
        if self._stale:
            self._refresh_slots()
        return {node: self._maker(node) for node in sorted({n for n in self._slot_nodes if n})}

    def load_script(self, script: bytes) -> str:
        """Load a script on every master; its SHA-1."""
        try:
            shas = {c.script_load(script) for c in self.node_clients()}
        except redis.RedisError as exc:
            self._stale = True
            raise self.unavailable(exc) from exc
        return str(shas.pop())

    def unavailable(self, exc: Exception) -> StoreUnavailableError:
        return StoreUnavailableError(f"{self.settings.describe()}: {describe_error(exc)}")

    # --- routing ----------------------------------------------------------------------------

    def _exchange_once(
        self, keys: Sequence[bytes], commands: Sequence[bytes], timeout_s: float
    ) -> list[Any]:
        by_node: dict[str, list[int]] = {}
        slot_nodes = self._slot_nodes
        for i, key in enumerate(keys):
            node = slot_nodes[key_slot(key) if b"{" in key else crc_hqx(key, 0) & 0x3FFF]
            if node is None:
                raise StoreUnavailableError(f"no master serves the slot of key {i}")
            by_node.setdefault(node, []).append(i)
        links = {node: self._link(node) for node in by_node}
        try:
            for node, at in by_node.items():  # every master gets its commands first...
                links[node].send(b"".join([commands[i] for i in at]), timeout_s)
            replies: list[Any] = [None] * len(commands)
            for node, at in by_node.items():  # ...then the replies are read
                for i, reply in zip(at, links[node].receive(len(at), timeout_s), strict=True):
                    replies[i] = reply
        except BaseException:
            for link in links.values():  # replies may be unread on any of them
                link.close()
            raise
        return self._redirected(replies, commands, timeout_s)

    def _redirected(
        self, replies: list[Any], commands: Sequence[bytes], timeout_s: float
    ) -> list[Any]:
        for i, reply in enumerate(replies):
            if not isinstance(reply, hiredis.ReplyError):
                continue
            kind, _slot, address = [*str(reply).split(" "), "", ""][:3]
            if kind in ("MOVED", "ASK"):
                self.topology += 1
            if kind == "MOVED":
                self._stale = True  # refresh before the next request
                replies[i] = self._link(address).exchange(commands[i], 1, timeout_s)[0]
            elif kind == "ASK":
                replies[i] = self._link(address).exchange(ASKING + commands[i], 2, timeout_s)[1]
            elif kind in ("TRYAGAIN", "CLUSTERDOWN"):
                raise redis.ConnectionError(str(reply))
            else:
                raise redis.ResponseError(str(reply))
        return replies

    def _link(self, node: str) -> Link:
        links = self._links.get()
        link = links.get(node)
        if link is None:
            link = links[node] = Link(self._maker(node))
        return link

    def _maker(self, node: str) -> Callable[[], Any]:
        """A maker of unconnected redis-py connections to `node` ("host:port")."""
        host, _, port = node.rpartition(":")
        target = self._cluster.get_node(host=host, port=int(port)) or ClusterNode(host, int(port))
        pool = self._cluster.get_redis_connection(target).connection_pool
        return lambda: pool.connection_class(**pool.connection_kwargs)

    def _refresh_slots(self) -> None:
        """The slot -> master table, re-read from the cluster (after an error or MOVED)."""
        with self._lock:
            try:
                if self._cluster is None:
                    self._cluster = RedisCluster(
                        startup_nodes=[ClusterNode(h, p) for h, p in self.settings.nodes],
                        require_full_coverage=False,
                        **self._kwargs,
                    )
                else:
                    self._cluster.nodes_manager.initialize()
                cache = self._cluster.nodes_manager.slots_cache
            except (TypeError, ValueError) as exc:  # an option redis-py does not take
                raise UsageError(
                    f"{self.settings.describe()}: bad connection option: {exc}"
                ) from None
            except CLUSTER_ERRORS as exc:
                raise self.unavailable(exc) from exc
            self._slot_nodes = [
                cache[slot][0].name if cache.get(slot) else None for slot in range(SLOTS)
            ]
            self._stale = False
            self.topology += 1
