"""A coherent in-process cache of online reads, kept coherent by Redis's invalidation messages.

Concern: answer repeated reads of the same keys from memory, never serving a value that Redis
no longer holds for longer than the invalidation delay (the time an invalidation takes from
Redis to the listener thread; benchmarks/README.md has the measured figure).

- What is cached is the raw reply of one read command (an HMGET of a key group's fields),
  under the Redis key bytes, then the command bytes: `reads.read` and `reads.read_raw` share
  it, and everything decoded from a reply (values, `_ts`, STALE against the request's now)
  runs on a hit as on a miss, so the ttl check stays exact.
- Bounded: at most `capacity` Redis keys, the least recently used evicted first; a key keeps
  at most MAX_SHAPES commands (the field sets of the plans that read it).
- Coherence: one listener connection per master, `CLIENT TRACKING ON REDIRECT <itself> BCAST`
  and `SUBSCRIBE __redis__:invalidate` (RESP2): every write to any key (HSET, EVAL, EXPIRE,
  expiry, eviction) sends its key, which is dropped; a null message (FLUSHALL, FLUSHDB) drops
  everything. Broadcast rather than tracking on the read links: a link keeps no tracking
  state to re-issue when the listener reconnects, and a cluster needs one listener per master
  whichever thread reads. Its cost is an invalidation per written key, read or not: a
  materialize of N keys sends N key names, applied in batches as Redis sends them.
- Races: a read notes the cache's epoch before it goes to Redis. Its replies enter the cache
  only if no invalidation of its keys (nor a flush, nor a topology change) was applied since,
  so a reply older than an invalidation never enters the cache after it.
- The channel down (its connection lost, Redis refusing CLIENT TRACKING, the output buffer
  limit hit in a flood of invalidations): the cache empties and is bypassed, every read goes
  to Redis, until the listener is subscribed again. Each outage is logged once and counted.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import hiredis
import redis

from serving.errors import StoreUnavailableError, UsageError

log = logging.getLogger(__name__)

INVALIDATE_CHANNEL = b"__redis__:invalidate"
LISTENER_NAME = b"carrara-invalidations"  # CLIENT LIST shows the listeners by this name
MAX_SHAPES = 8  # commands kept per key: one per field set of the plans reading it
RETRY_S = (0.05, 0.2, 1.0, 2.0)  # waits between attempts to subscribe again
POLL_S = 0.5  # the listener looks at the topology at least this often
CONNECT_TIMEOUT_S = 1.0
RECENT_INVALIDATIONS = 256  # invalidation messages remembered for in-flight reads
_EVERYTHING = None  # an invalidation of every key: a flush, the channel lost or regained


class Listened(Protocol):
    """What the cache needs of a connection: reads, and where to listen for invalidations."""

    def exchange_keyed(
        self, keys: Sequence[bytes], commands: Sequence[bytes], timeout_s: float
    ) -> list[Any]: ...

    def invalidation_sources(self) -> Mapping[str, Callable[[], Any]]:
        """Per master: a maker of an unconnected redis-py connection to it."""
        ...

    @property
    def topology(self) -> int:
        """Changes whenever the masters, or where a key is read from, may have changed."""
        ...


@dataclass(frozen=True)
class CacheStats:
    capacity: int
    entries: int  # Redis keys cached
    hits: int  # keys read from the cache
    misses: int  # keys read from Redis (while the cache is on)
    invalidated_keys: int  # keys named by invalidation messages (a flush counts the entries)
    fallbacks: int  # outages of the invalidation channel (or refusals of tracking)
    live: bool  # the channel is up: the cache is used


class FeatureCache:
    """Reads through `connection`, answered from memory where a coherent reply is cached."""

    def __init__(self, connection: Listened, capacity: int) -> None:
        if capacity < 1:
            raise UsageError("the feature cache needs at least 1 entry")
        self.capacity = capacity
        self._connection = connection
        self._lock = threading.Lock()  # guards everything below
        self._entries: OrderedDict[bytes, dict[bytes, Any]] = OrderedDict()
        self._epoch = 0  # bumped by each invalidation applied
        self._recent: deque[tuple[int, frozenset[bytes] | None]] = deque(
            maxlen=RECENT_INVALIDATIONS
        )
        self._live = False
        self._topology = -1  # the connection's topology the listeners were subscribed for
        self._hits = self._misses = self._invalidated = self._fallbacks = 0
        self._announced_down = False
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(
            target=self._listen_forever, name="carrara-cache-invalidations", daemon=True
        )
        self._thread.start()

    # --- the read path ----------------------------------------------------------------------

    def exchange_keyed(
        self, keys: Sequence[bytes], commands: Sequence[bytes], timeout_s: float
    ) -> list[Any]:
        """As the connection's: the replies in order, those cached from memory."""
        connection = self._connection
        if not self._live:  # a stale True is caught by the epoch check below
            return connection.exchange_keyed(keys, commands, timeout_s)
        replies: list[Any] = [None] * len(keys)
        missing: list[int] = []
        with self._lock:
            epoch, entries = self._epoch, self._entries
            for i, key in enumerate(keys):
                entry = entries.get(key)
                reply = None if entry is None else entry.get(commands[i])
                if reply is None:
                    missing.append(i)
                else:
                    entries.move_to_end(key)
                    replies[i] = reply
            self._hits += len(keys) - len(missing)
            self._misses += len(missing)
        if not missing:
            return replies
        topology = connection.topology
        if len(missing) == len(keys):
            fetched = connection.exchange_keyed(keys, commands, timeout_s)
        else:
            fetched = connection.exchange_keyed(
                [keys[i] for i in missing], [commands[i] for i in missing], timeout_s
            )
        for i, reply in zip(missing, fetched, strict=True):
            replies[i] = reply
        if len(missing) == len(keys):
            self._keep(list(keys), list(commands), fetched, epoch, topology)
        else:
            kept = ([keys[i] for i in missing], [commands[i] for i in missing])
            self._keep(*kept, fetched, epoch, topology)
        return replies

    def _keep(
        self,
        keys: list[bytes],
        commands: list[bytes],
        replies: list[Any],
        epoch: int,
        topology: int,
    ) -> None:
        """Cache replies read since `epoch`, unless one of their keys was invalidated since."""
        with self._lock:
            if not self._live or not topology == self._connection.topology == self._topology:
                return
            if epoch != self._epoch:
                since = [names for at, names in self._recent if at > epoch]
                oldest_known = self._recent[0][0] if self._recent else self._epoch + 1
                if oldest_known > epoch + 1 or _EVERYTHING in since:
                    return  # too many invalidations since to tell which keys they named
                if any(not names.isdisjoint(keys) for names in since if names is not None):
                    return
            entries, capacity = self._entries, self.capacity
            for key, command, reply in zip(keys, commands, replies, strict=True):
                entry = entries.get(key)
                if entry is None:
                    entries[key] = {command: reply}
                    if len(entries) > capacity:
                        entries.popitem(last=False)
                else:
                    if len(entry) >= MAX_SHAPES and command not in entry:
                        entry.clear()
                    entry[command] = reply
                    entries.move_to_end(key)

    # --- state ------------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                capacity=self.capacity,
                entries=len(self._entries),
                hits=self._hits,
                misses=self._misses,
                invalidated_keys=self._invalidated,
                fallbacks=self._fallbacks,
                live=self._live,
            )

    def close(self) -> None:
        self._stop.set()
        self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        self._wake_r.close()
        self._wake_w.close()

    def _invalidate(self, keys: Sequence[bytes] | None) -> None:
        with self._lock:
            self._epoch += 1
            if keys is None:
                self._invalidated += len(self._entries)
                self._entries.clear()
                self._recent.append((self._epoch, _EVERYTHING))
                return
            pop = self._entries.pop
            for key in keys:
                pop(key, None)
            self._invalidated += len(keys)
            self._recent.append((self._epoch, frozenset(keys)))

    def _go_live(self, topology: int) -> None:
        with self._lock:
            self._entries.clear()
            self._epoch += 1
            self._recent.append((self._epoch, _EVERYTHING))
            self._topology = topology
            self._live = True
            recovered, self._announced_down = self._announced_down, False
        if recovered:
            log.warning("feature cache: invalidations subscribed again; the cache is on")
        else:
            log.info("feature cache on: %d entries, invalidations subscribed", self.capacity)

    def _go_down(self, reason: str, outage: bool = True) -> None:
        """Empty and bypass the cache; an outage is logged and counted once until it ends."""
        with self._lock:
            self._live = False
            self._entries.clear()
            self._epoch += 1
            self._recent.append((self._epoch, _EVERYTHING))
            first = outage and not self._announced_down
            if first:
                self._announced_down = True
                self._fallbacks += 1
        if first:
            log.warning("feature cache off, reads go to Redis until it is back: %s", reason)

    # --- the listener thread ----------------------------------------------------------------

    def _listen_forever(self) -> None:
        failures = 0
        while not self._stop.is_set():
            topology = self._connection.topology
            try:
                listeners = self._subscribe()
            except _LISTEN_ERRORS as exc:
                self._go_down(f"cannot subscribe to invalidations ({_describe(exc)})")
                self._stop.wait(RETRY_S[min(failures, len(RETRY_S) - 1)])
                failures += 1
                continue
            failures = 0
            try:
                self._go_live(topology)
                if self._pump(listeners):
                    self._go_down("the masters changed", outage=False)
            except _LISTEN_ERRORS as exc:
                self._go_down(f"the invalidation connection was lost ({_describe(exc)})")
            finally:
                for listener in listeners:
                    listener.close()
        self._go_down("closed", outage=False)

    def _subscribe(self) -> list[_Listener]:
        listeners: list[_Listener] = []
        try:
            for name, make in self._connection.invalidation_sources().items():
                listeners.append(_Listener(name, make()))
        except BaseException:
            for listener in listeners:
                listener.close()
            raise
        return listeners

    def _pump(self, listeners: list[_Listener]) -> bool:
        """Apply invalidations until stopped (False) or the masters changed (True)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ, None)
            for listener in listeners:
                selector.register(listener.sock, selectors.EVENT_READ, listener)
            while not self._stop.is_set():
                for key, _events in selector.select(POLL_S):
                    if key.data is not None:
                        for keys in key.data.drain():
                            self._invalidate(keys)
                if self._connection.topology != self._topology and self._masters_changed(listeners):
                    return True
        return False

    def _masters_changed(self, listeners: list[_Listener]) -> bool:
        topology = self._connection.topology
        names = set(self._connection.invalidation_sources())
        if names != {listener.name for listener in listeners}:
            return True
        with self._lock:  # the same masters: reads since the change may be kept again
            self._topology = topology
        return False


class _Listener:
    """One master's invalidation connection, subscribed (RESP2, BCAST, redirected to itself)."""

    def __init__(self, name: str, conn: Any) -> None:
        self.name = name
        self._conn = conn
        self._reader = hiredis.Reader()
        conn.socket_connect_timeout = CONNECT_TIMEOUT_S
        try:
            conn.connect()
            self.sock: Any = conn._sock  # redis-py keeps no public accessor
            self.sock.settimeout(CONNECT_TIMEOUT_S)
            self._subscribe()
        except BaseException:
            conn.disconnect()
            raise

    def _subscribe(self) -> None:
        named, client_id = self._call(
            b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$%d\r\n%s\r\n"
            % (len(LISTENER_NAME), LISTENER_NAME)
            + b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n",
            2,
        )
        if not isinstance(client_id, int):
            raise redis.ResponseError(f"CLIENT SETNAME/ID refused: {named}, {client_id}")
        redirect = str(client_id).encode()
        tracking, subscribed = self._call(
            b"*6\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\nON\r\n$8\r\nREDIRECT\r\n"
            + b"$%d\r\n%s\r\n$5\r\nBCAST\r\n" % (len(redirect), redirect)
            + b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n"
            % (len(INVALIDATE_CHANNEL), INVALIDATE_CHANNEL),
            2,
        )
        if isinstance(tracking, hiredis.ReplyError):
            raise redis.ResponseError(f"CLIENT TRACKING refused: {tracking}")
        if not (isinstance(subscribed, list) and subscribed[:1] == [b"subscribe"]):
            raise redis.ResponseError(f"SUBSCRIBE {INVALIDATE_CHANNEL.decode()}: {subscribed}")
        self.sock.setblocking(False)

    def _call(self, packed: bytes, count: int) -> list[Any]:
        self.sock.sendall(packed)
        replies: list[Any] = []
        while len(replies) < count:
            reply = self._reader.gets()
            if reply is False:
                data = self.sock.recv(65536)
                if not data:
                    raise redis.ConnectionError("Redis closed the connection")
                self._reader.feed(data)
            else:
                replies.append(reply)
        return replies

    def drain(self) -> list[list[bytes] | None]:
        """The key lists of every invalidation received so far (None: every key)."""
        while True:
            try:
                data = self.sock.recv(1 << 18)
            except (BlockingIOError, ssl.SSLWantReadError):
                break
            if not data:
                raise redis.ConnectionError("Redis closed the invalidation connection")
            self._reader.feed(data)
        found: list[list[bytes] | None] = []
        while (message := self._reader.gets()) is not False:
            if isinstance(message, list) and len(message) == 3 and message[0] == b"message":
                keys = message[2]
                found.append(None if keys is None else list(keys))
        return found

    def close(self) -> None:
        self._conn.disconnect()


_LISTEN_ERRORS = (
    redis.RedisError,
    OSError,
    hiredis.ProtocolError,
    StoreUnavailableError,
    ValueError,
)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
