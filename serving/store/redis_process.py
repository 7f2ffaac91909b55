"""A private redis-server: free loopback port, no persistence, stopped by its pid.

For `carrara demo`, the benchmarks and the tests: each starts its own server instead of
touching a shared one. `stop` and `start` on the same object keep the port, so an outage
can be simulated and recovered from.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import redis

from serving.errors import UsageError
from serving.ports import free_port

START_TIMEOUT_S = 10.0


class RedisProcess:
    def __init__(
        self, workdir: Path, port: int | None = None, extra_args: Sequence[str] = ()
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise UsageError(
                "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise OSError(f"redis-server exited at start on port {self.port}")
                try:
                    if client.ping():
                        self._check_it_is_ours(client, self.process.pid)
                        return
                except redis.ConnectionError:
                    time.sleep(0.02)
        finally:
            client.close()
        self.stop()
        raise OSError(f"redis-server on port {self.port} did not answer within {START_TIMEOUT_S} s")

    def _check_it_is_ours(self, client: redis.Redis, pid: int) -> None:
        """Another server may have taken the port between probe and bind: never use it."""
        info = cast(dict[str, Any], client.info("server"))
        if int(info["process_id"]) != pid:
            raise OSError(f"port {self.port} is served by another redis-server")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@contextmanager
def private_redis(
    workdir: Path, extra_args: Sequence[str] = (), attempts: int = 5
) -> Iterator[RedisProcess]:
    """A started server; retried on another port if one was taken between probe and bind."""
    for _attempt in range(attempts):
        server = RedisProcess(workdir, extra_args=extra_args)
        try:
            server.start()
            break
        except OSError:
            server.stop()
    else:
        raise UsageError(f"could not start redis-server on a free loopback port ({attempts} tries)")
    try:
        yield server
    finally:
        server.stop()
