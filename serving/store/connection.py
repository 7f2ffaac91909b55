"""The connection to Redis: redis-py's pool for writes, and a raw RESP link per thread for reads.

The only module that opens connections to the online store (redis_process.py pings only the
private servers it starts); a redis error leaves the store as StoreUnavailableError naming the
redacted URL (never the password).
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import hiredis
import redis

from serving.errors import StoreUnavailableError, UsageError
from serving.store.per_thread import PerThread
from serving.store.settings import RedisSettings

READ_TIMEOUT_S = 1.0
READ_BUFFER_BYTES = 1 << 16


class KeyedReader(Protocol):
    """What reads need: pipelined commands, one per key (a connection, or the feature cache)."""

    def exchange_keyed(
        self, keys: Sequence[bytes], commands: Sequence[bytes], timeout_s: float
    ) -> list[Any]: ...


class Connection(Protocol):
    """What reads and writes need of a connection, whatever the topology."""

    settings: RedisSettings

    def ping(self, timeout_s: float = READ_TIMEOUT_S) -> None: ...

    def close(self) -> None: ...

    def exchange_keyed(
        self, keys: Sequence[bytes], commands: Sequence[bytes], timeout_s: float
    ) -> list[Any]: ...

    def node_clients(self) -> list[Any]: ...

    def unavailable(self, exc: Exception) -> StoreUnavailableError: ...


class RedisConnection:
    """One Redis server (named directly, or the master a Sentinel names): a plain connection
    pool for writes plus the reading threads' own links."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self._pool = _pool(settings)  # writes; its settings make read links too
        self._links = PerThread(lambda: Link(self._new_connection))  # one per thread

    def ping(self, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.exchange(b"*1\r\n$4\r\nPING\r\n", 1, timeout_s)

    def close(self) -> None:
        for link in self._links.every():
            link.close()
        self._pool.disconnect()

    def exchange(self, packed: bytes, replies: int, timeout_s: float) -> list[Any]:
        """Send pipelined commands (RESP bytes) on this thread's link and read `replies`."""
        if not replies:
            return []
        try:
            return self._links.get().exchange(packed, replies, timeout_s)
        except redis.RedisError as exc:
            raise self.unavailable(exc) from exc

    def exchange_keyed(
        self, keys: Sequence[bytes], commands: Sequence[bytes], timeout_s: float
    ) -> list[Any]:
        """One command per key (RESP bytes), pipelined; the replies in order."""
        return self.exchange(b"".join(commands), len(commands), timeout_s)

    def client(self) -> redis.Redis:
        """A redis-py client on this connection's pool (its topology, TLS and credentials),
        for commands the store does not wrap (the ingester's stream commands)."""
        return redis.Redis(connection_pool=self._pool)

    @contextmanager
    def checkout(self, timeout_s: float) -> Iterator[Any]:
        """A pooled redis-py connection, dropped (not reused) when the block fails."""
        try:
            conn = self._pool.get_connection()
        except redis.RedisError as exc:
            raise self.unavailable(exc) from exc
        conn.update_current_socket_timeout(timeout_s)
        conn_: Any = conn  # redis-py's Connection methods are untyped
        try:
            yield conn
        except redis.RedisError as exc:
            conn_.disconnect()
            raise self.unavailable(exc) from exc
        except BaseException:
            conn_.disconnect()  # replies may be unread: never hand this connection out again
            raise
        finally:
            self._pool.release(conn)

    def node_clients(self) -> list[Any]:
        """redis-py clients, one per master, for occasional commands off the request path."""
        return [redis.Redis(connection_pool=self._pool)]

    # One server: where a key is read from never changes (feature_cache.py's `Listened`).
    topology = 0

    def invalidation_sources(self) -> dict[str, Callable[[], Any]]:
        """The server, and a maker of connections to it (feature_cache.py's listener)."""
        return {self.settings.describe(): self._new_connection}

    def unavailable(self, exc: Exception) -> StoreUnavailableError:
        return StoreUnavailableError(f"{self.settings.describe()}: {describe_error(exc)}")

    def _new_connection(self) -> Any:
        return self._pool.connection_class(**self._pool.connection_kwargs)


def connect(settings: RedisSettings) -> Connection:
    """The connection for the settings' topology (a cluster gets serving/store/cluster.py's)."""
    if settings.cluster:
        from serving.store.cluster import ClusterConnection

        return ClusterConnection(settings)
    return RedisConnection(settings)


def _pool(settings: RedisSettings) -> Any:
    timeouts = {"socket_timeout": READ_TIMEOUT_S, "socket_connect_timeout": READ_TIMEOUT_S}
    kwargs = settings.connection_kwargs() | timeouts
    try:
        if settings.topology == "sentinel":
            from redis import sentinel as redis_sentinel

            sentinel: Any = redis_sentinel.Sentinel(list(settings.nodes), **kwargs)  # type: ignore[no-untyped-call]
            return sentinel.master_for(settings.sentinel_master).connection_pool
        kwargs.pop("ssl", None)  # the URL's scheme says it (rediss://)
        return redis.ConnectionPool.from_url(settings.url, **kwargs)
    except (TypeError, ValueError) as exc:  # an option redis-py does not take
        raise UsageError(f"{settings.describe()}: bad connection option: {exc}") from None


def describe_error(exc: Exception) -> str:
    """A redis error in a line, saying so when TLS is what failed."""
    text = str(exc)
    if isinstance(exc, ssl.SSLError) or "SSL" in text or "certificate" in text:
        return f"TLS failed ({text}): is the server serving TLS, with this CA?"
    return text


class Link:
    """One thread's connection to one Redis server. redis-py connects it (URL, AUTH, SELECT,
    TLS); the exchange then writes the pipeline to its socket and parses every reply with one
    hiredis reader. The pool's checkout (a poll() per call) and redis-py's per-reply
    read_response cost more than the round trip itself at 100 rows (~300 replies).

    A link used before may find that Redis restarted meanwhile: a connection error on it is
    retried once on a new connection (reads are idempotent; a timeout is not retried). Any
    failure drops the connection, so no reply is ever left unread on it.
    """

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._conn = connect()
        self._reader: Any = None
        self._buffer = bytearray(READ_BUFFER_BYTES)
        self._timeout_s: float | None = None

    def exchange(self, packed: bytes, count: int, timeout_s: float) -> list[Any]:
        """Send and receive; the first error reply is raised as redis.ResponseError."""
        reused = self._reader is not None
        try:
            return _raise_reply_error(self._exchange(packed, count, timeout_s))
        except redis.ConnectionError:
            self.close()
            if not reused:
                raise
        except BaseException:
            self.close()
            raise
        try:
            return _raise_reply_error(self._exchange(packed, count, timeout_s))
        except BaseException:
            self.close()
            raise

    def _exchange(self, packed: bytes, count: int, timeout_s: float) -> list[Any]:
        self.send(packed, timeout_s)
        return self.receive(count, timeout_s)

    def send(self, packed: bytes, timeout_s: float) -> None:
        try:
            self._socket(timeout_s).sendall(packed)
        except (TimeoutError, BlockingIOError) as exc:  # socket.timeout; SO_SNDTIMEO
            raise redis.TimeoutError(f"Timeout after {timeout_s:g} s writing to Redis") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"Error talking to Redis: {exc}") from exc

    def receive(self, count: int, timeout_s: float) -> list[Any]:
        """`count` replies; error replies are hiredis.ReplyError values among them."""
        sock = self._socket(timeout_s)
        reader, buffer = self._reader, self._buffer
        replies: list[Any] = []
        try:
            while len(replies) < count:
                reply = reader.gets()
                if reply is False:
                    received = sock.recv_into(buffer)
                    if not received:
                        raise redis.ConnectionError("Redis closed the connection")
                    reader.feed(buffer, 0, received)
                else:
                    replies.append(reply)
        except (TimeoutError, BlockingIOError) as exc:  # socket.timeout; SO_RCVTIMEO
            raise redis.TimeoutError(f"Timeout after {timeout_s:g} s reading from Redis") from exc
        except (OSError, hiredis.ProtocolError) as exc:
            raise redis.ConnectionError(f"Error talking to Redis: {exc}") from exc
        return replies

    def _socket(self, timeout_s: float) -> Any:
        if self._reader is None:
            # the caller's deadline bounds the connect and a TLS handshake too
            self._conn.socket_connect_timeout = min(timeout_s, READ_TIMEOUT_S)
            self._conn.connect()  # raises redis.ConnectionError / TimeoutError
            self._reader = hiredis.Reader()
            self._timeout_s = None
        sock = self._conn._sock  # redis-py keeps no public accessor
        if timeout_s != self._timeout_s:
            _set_timeout(sock, timeout_s)
            self._timeout_s = timeout_s
        return sock

    def close(self) -> None:
        self._reader = None
        self._conn.disconnect()


def _set_timeout(sock: Any, timeout_s: float) -> None:
    """Bound each send and receive by `timeout_s`. A plain socket gets a blocking one with
    SO_SNDTIMEO/SO_RCVTIMEO: Python's own timeout would poll() before every send and every
    receive, two syscalls per read that the kernel's timeout spares. TLS keeps Python's."""
    if isinstance(sock, ssl.SSLSocket):
        sock.settimeout(timeout_s)
        return
    sock.settimeout(None)
    seconds = int(timeout_s)
    micros = max(int((timeout_s - seconds) * 1e6), 0 if seconds else 1)  # 0 s 0 us: no timeout
    value = struct.pack("@ll", seconds, micros)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _raise_reply_error(replies: list[Any]) -> list[Any]:
    if hiredis.ReplyError in map(type, replies):
        error = next(r for r in replies if isinstance(r, hiredis.ReplyError))
        raise redis.ResponseError(str(error))
    return replies
