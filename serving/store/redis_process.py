"""A private redis-server: free loopback port, no persistence, stopped by its pid.

For `carrara demo`, the benchmarks and the tests: each starts its own server instead of
touching a shared one. `stop` and `start` on the same object keep the port, so an outage
can be simulated and recovered from.
"""

from __future__ import annotations

import shutil
import socket
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


CLUSTER_PORT_MAX = 55535  # a cluster node's bus port is its port + 10000
CLUSTER_READY_TIMEOUT_S = 30.0


class LocalCluster:
    """A private Redis Cluster: `masters` masters with `replicas` replicas each, on loopback."""

    def __init__(self, nodes: list[RedisProcess], replicas: int) -> None:
        self.nodes = nodes
        self.replicas = replicas

    @property
    def connection_string(self) -> str:
        """Feast's `connection_string` for the cluster: every node."""
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def configure_repo(self, repo: Path) -> None:
        """Point a Feast repo's online store at this cluster, as Feast configures one."""
        config = repo / "feature_store.yaml"
        lines = [
            line
            for line in config.read_text().splitlines()
            if "connection_string" not in line and "redis_type" not in line
        ]
        at = next(i for i, line in enumerate(lines) if line.strip() == "type: redis") + 1
        indent = lines[at - 1][: len(lines[at - 1]) - len(lines[at - 1].lstrip())]
        lines[at:at] = [
            f"{indent}redis_type: redis_cluster",
            f'{indent}connection_string: "{self.connection_string}"',
        ]
        config.write_text("\n".join(lines) + "\n")

    def create(self) -> None:
        binary = shutil.which("redis-cli")
        if binary is None:
            raise UsageError(
                "redis-cli is not installed (it comes with redis-server / redis-tools)"
            )
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        replicas = ("--cluster-replicas", str(self.replicas))
        subprocess.run(
            [binary, "--cluster", "create", *addresses, *replicas, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=CLUSTER_READY_TIMEOUT_S,
        )
        self.wait_until_ok()

    def wait_until_ok(self, timeout_s: float = CLUSTER_READY_TIMEOUT_S) -> None:
        """Until every running node says cluster_state:ok and knows every slot."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self._node_ok(n) for n in self.nodes if n.process is not None):
                return
            time.sleep(0.05)
        raise OSError(f"the cluster was not ok within {timeout_s:g} s")

    def masters(self) -> list[RedisProcess]:
        return [n for n in self.nodes if n.process is not None and self._role(n) == "master"]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @staticmethod
    def _node_ok(node: RedisProcess) -> bool:
        client = redis.Redis(port=node.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            info = str(client.execute_command("CLUSTER", "INFO"))  # type: ignore[no-untyped-call]
            return "cluster_state:ok" in info and "cluster_slots_ok:16384" in info
        except redis.RedisError:
            return False
        finally:
            client.close()

    @staticmethod
    def _role(node: RedisProcess) -> str:
        client = redis.Redis(port=node.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return str(cast(dict[str, Any], client.info("replication"))["role"])
        finally:
            client.close()


def cluster_port() -> int:
    """A free port whose bus port (+10000) is free too, both at most 65535."""
    for _attempt in range(200):
        port = free_port()
        if port <= CLUSTER_PORT_MAX and _bindable(port + 10000):
            return port
    raise OSError("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def private_cluster(workdir: Path, masters: int = 3, replicas: int = 1) -> Iterator[LocalCluster]:
    """A started and created cluster, stopped (every node, by pid) on exit."""
    nodes: list[RedisProcess] = []
    cluster = LocalCluster(nodes, replicas)
    try:
        for i in range(masters * (1 + replicas)):
            port = cluster_port()
            node = RedisProcess(
                workdir / f"node{i}",
                port,
                extra_args=(
                    *("--cluster-enabled", "yes", "--cluster-node-timeout", "1000"),
                    *("--cluster-config-file", f"nodes-{port}.conf"),
                ),
            )
            nodes.append(node)
            node.start()
        cluster.create()
        yield cluster
    finally:
        cluster.stop()
