"""The connection to Redis: redis-py's pool for writes, and a raw RESP link per thread for reads.

The only module that opens connections to the online store (redis_process.py pings only the
private servers it starts); a redis error leaves the store as StoreUnavailableError naming the
redacted URL (never the password).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import hiredis
import redis

from serving.errors import StoreUnavailableError, UsageError
from serving.store.per_thread import PerThread
from serving.store.settings import RedisSettings

READ_TIMEOUT_S = 1.0
READ_BUFFER_BYTES = 1 << 16


class RedisConnection:
    """One Redis server: a plain connection pool plus the reading threads' own links."""

    def __init__(self, settings: RedisSettings) -> None:
        if settings.cluster:
            raise UsageError("Redis Cluster (redis_type: redis_cluster) is not supported yet")
        self.settings = settings
        self._pool = redis.ConnectionPool.from_url(  # writes; its settings make read links too
            settings.url, socket_timeout=READ_TIMEOUT_S, socket_connect_timeout=READ_TIMEOUT_S
        )
        self._links = PerThread(lambda: _Link(self._new_connection))  # one per thread

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

    def client(self) -> redis.Redis:
        """A redis-py client on the pool, for occasional commands off the request path."""
        return redis.Redis(connection_pool=self._pool)

    def unavailable(self, exc: redis.RedisError) -> StoreUnavailableError:
        return StoreUnavailableError(f"Redis at {self.settings.redacted_url}: {exc}")

    def _new_connection(self) -> Any:
        return self._pool.connection_class(**self._pool.connection_kwargs)


class _Link:
    """One thread's read connection. redis-py connects it (URL, AUTH, SELECT, TLS); the
    exchange then writes the pipeline to its socket and parses every reply with one hiredis
    reader. The pool's checkout (a poll() per call) and redis-py's per-reply read_response
    cost more than the round trip itself at 100 rows (~300 replies).

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
        reused = self._reader is not None
        try:
            return self._exchange(packed, count, timeout_s)
        except redis.ConnectionError:
            self.close()
            if not reused:
                raise
        except BaseException:
            self.close()
            raise
        try:
            return self._exchange(packed, count, timeout_s)
        except BaseException:
            self.close()
            raise

    def _exchange(self, packed: bytes, count: int, timeout_s: float) -> list[Any]:
        sock = self._socket(timeout_s)
        reader, buffer = self._reader, self._buffer
        replies: list[Any] = []
        try:
            sock.sendall(packed)
            while len(replies) < count:
                reply = reader.gets()
                if reply is False:
                    received = sock.recv_into(buffer)
                    if not received:
                        raise redis.ConnectionError("Redis closed the connection")
                    reader.feed(buffer, 0, received)
                else:
                    replies.append(reply)
        except TimeoutError as exc:  # socket.timeout
            raise redis.TimeoutError(f"Timeout after {timeout_s:g} s reading from Redis") from exc
        except (OSError, hiredis.ProtocolError) as exc:
            raise redis.ConnectionError(f"Error talking to Redis: {exc}") from exc
        if hiredis.ReplyError in map(type, replies):
            error = next(r for r in replies if isinstance(r, hiredis.ReplyError))
            raise redis.ResponseError(str(error))
        return replies

    def _socket(self, timeout_s: float) -> Any:
        if self._reader is None:
            self._conn.connect()  # raises redis.ConnectionError / TimeoutError
            self._reader = hiredis.Reader()
            self._timeout_s = None
        sock = self._conn._sock  # redis-py keeps no public accessor
        if timeout_s != self._timeout_s:
            sock.settimeout(timeout_s)
            self._timeout_s = timeout_s
        return sock

    def close(self) -> None:
        self._reader = None
        self._conn.disconnect()
