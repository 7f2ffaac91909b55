"""Managed Redis as teams run it: Sentinel with failover, TLS, ACL users; secrets never shown.

Each against real servers started here on free loopback ports: a master, its replica and a
Sentinel; a TLS-only redis-server with certificates made by openssl; an ACL user.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from serving.errors import StoreUnavailableError
from serving.ports import free_port
from serving.store import encoding
from serving.store.online_store import OnlineStore
from serving.store.redis_process import RedisProcess, private_redis
from serving.store.settings import (
    RedisSettings,
    feast_settings,
    url_settings,
    with_secrets_from_env,
)
from serving.store.write_guard import RowBatch
from tests.helpers import hash_of, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT = "managed"
SECRET = "s3cret-Pa55"


def write_and_read(store: OnlineStore, value: int) -> int:
    """Write driver 7's `trips` (newer each time) and read it back through the store."""
    key = encoding.encode_entity_keys(["driver_id"], ["Int64"], [[7]], PROJECT)
    event = encoding.encode_timestamps([(1_700_000_000 + value) * 10**6])
    store.write_view(
        "v", ["trips"], [RowBatch(key, event, [encoding.encode_values("Int64", [value])])]
    )
    reply = store.connection.exchange_keyed(key, [_hget(key[0])], 1.0)[0]
    from serving.store import codec

    decoded = codec.decode_value(reply)
    assert isinstance(decoded, int)
    return decoded


def _hget(key: bytes) -> bytes:
    from serving.store import codec

    field = codec.field_name("v", "trips")
    return b"*3\r\n$4\r\nHGET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(field), field)


# --- Sentinel ----------------------------------------------------------------------------


class SentinelProcess:
    def __init__(self, workdir: Path, master_port: int) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n"
            "sentinel down-after-milliseconds mymaster 500\n"
            "sentinel failover-timeout mymaster 3000\n"
        )
        self.process = subprocess.Popen(
            ["redis-server", str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def master(self) -> tuple[str, int] | None:
        client = redis.Redis(
            port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5, decode_responses=True
        )
        try:
            host, port = client.sentinel_get_master_addr_by_name("mymaster")
            return str(host), int(port)
        except (redis.RedisError, TypeError):
            return None
        finally:
            client.close()

    def knows_replicas(self) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.execute_command("SENTINEL", "REPLICAS", "mymaster"))
        except redis.RedisError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[tuple[RedisProcess, RedisProcess, SentinelProcess]]:
    with private_redis(tmp_path / "master") as master:
        replica = RedisProcess(
            tmp_path / "replica", extra_args=("--replicaof", "127.0.0.1", str(master.port))
        )
        replica.start()
        sentinel = SentinelProcess(tmp_path / "sentinel", master.port)
        try:
            wait_until(sentinel.master, timeout_s=20, what="the sentinel knows the master")
            # Sentinel learns of replicas from the master's INFO, every 10 s at first
            wait_until(sentinel.knows_replicas, timeout_s=30, what="the sentinel knows the replica")
            yield master, replica, sentinel
        finally:
            sentinel.stop()
            replica.stop()


def test_sentinel_master_is_followed_through_a_failover(
    sentinel_set: tuple[RedisProcess, RedisProcess, SentinelProcess],
) -> None:
    master, replica, sentinel = sentinel_set
    settings = feast_settings(f"127.0.0.1:{sentinel.port}", "redis_sentinel", "mymaster")
    store = OnlineStore(settings, PROJECT)
    try:
        assert write_and_read(store, 1) == 1
        wait_until(
            lambda: hash_of(
                f"redis://127.0.0.1:{replica.port}/0",
                encoding.encode_entity_keys(["driver_id"], ["Int64"], [[7]], PROJECT)[0],
            ),
            timeout_s=10,
            what="the replica has the row",
        )
        master.stop()
        wait_until(
            lambda: sentinel.master() == ("127.0.0.1", replica.port),
            timeout_s=30,
            what="the sentinel promotes the replica",
        )

        def served() -> int | None:
            try:
                return write_and_read(store, 2)
            except StoreUnavailableError:
                return None

        assert wait_until(served, timeout_s=30, what="the store follows the new master") == 2
    finally:
        store.close()


# --- TLS and ACL -------------------------------------------------------------------------


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA."""
    d = tmp_path_factory.mktemp("tls")
    for ca in ("ca", "other-ca"):
        openssl(
            *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ca}"),
            *("-keyout", str(d / f"{ca}.key"), "-out", str(d / f"{ca}.crt")),
        )
    openssl(
        *("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"),
        *("-keyout", str(d / "server.key"), "-out", str(d / "server.csr")),
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        *("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.crt")),
        *("-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2"),
        *("-extfile", str(d / "san.ext"), "-out", str(d / "server.crt")),
    )
    return d


@pytest.fixture(scope="module")
def tls_redis(
    certificates: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisProcess]:
    """A redis-server speaking TLS only, with an ACL user beside the default one."""
    port = free_port()
    args = (
        *("--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no"),
        *("--tls-cert-file", str(certificates / "server.crt")),
        *("--tls-key-file", str(certificates / "server.key")),
        *("--tls-ca-cert-file", str(certificates / "ca.crt")),
        *("--user", "default", "off", "--user", "app", "on", f">{SECRET}", "~*", "+@all"),
    )
    server = RedisProcess(tmp_path_factory.mktemp("tls-redis"), port, extra_args=args)
    server.process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: _listening(port), timeout_s=10, what="the TLS redis-server listens")
    yield server
    server.stop()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def tls_settings(server: RedisProcess, certificates: Path, ca: str = "ca.crt") -> RedisSettings:
    return feast_settings(
        f"127.0.0.1:{server.port},ssl=true,ssl_ca_certs={certificates / ca},username=app",
        "redis",
    )


def test_tls_and_an_acl_user_with_the_password_from_the_environment(
    tls_redis: RedisProcess, certificates: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARRARA_REDIS_PASSWORD", SECRET)
    settings = with_secrets_from_env(tls_settings(tls_redis, certificates))
    assert SECRET not in repr(settings)
    assert SECRET not in settings.describe()

    def served() -> int | None:
        try:
            store = OnlineStore(settings, PROJECT)
        except StoreUnavailableError:
            return None
        try:
            return write_and_read(store, 3)
        except StoreUnavailableError:
            return None
        finally:
            store.close()

    assert wait_until(served, timeout_s=20, what="the TLS server answers") == 3


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"password": "wrong"}, "invalid username-password"),
        ({"ca": "other-ca.crt"}, "TLS failed"),
        ({"plain": True}, "Error"),
    ],
)
def test_a_wrong_secret_or_certificate_is_one_clear_error_within_the_deadline(
    tls_redis: RedisProcess, certificates: Path, change: dict[str, object], named: str
) -> None:
    from dataclasses import replace

    settings = replace(
        tls_settings(tls_redis, certificates, str(change.get("ca", "ca.crt"))),
        password=str(change.get("password", SECRET)),
    )
    if change.get("plain"):  # a plain connection to a TLS port
        settings = replace(url_settings(f"redis://127.0.0.1:{tls_redis.port}/0"), password=SECRET)
    store = OnlineStore(settings, PROJECT)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as failed:
        store.ping(timeout_s=0.5)
    store.close()
    assert time.monotonic() - started < 3.0  # bounded by the deadline, not hung
    message = str(failed.value)
    assert named.lower() in message.lower(), message
    assert SECRET not in message
    assert str(change.get("password", SECRET)) not in message
