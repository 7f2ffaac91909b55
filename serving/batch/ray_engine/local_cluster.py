"""A private Ray cluster on loopback: a head and N worker nodes, each a `ray start --block`.

For the tests and benchmarks of the Ray engine: a real cluster (separate raylets, a real
object store and scheduling across nodes), not `local_mode`, started on free loopback ports
under a temp dir of its own and stopped by the pids it started (never `ray stop`, which would
stop every cluster on the machine).

Invariants: every node is a `ray start --block` child in a session of its own; stopping sends
it SIGTERM (Ray then stops the raylet, object store and workers it started), then SIGKILL to
its whole process group if it overruns. No dashboard, no usage stats, small object stores.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from serving.batch.ray_engine.session import QUIET_ENV, connect, disconnect
from serving.errors import UsageError
from serving.ports import free_port

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
OBJECT_STORE_BYTES = 200 * 1024 * 1024


@dataclass
class LocalRayCluster:
    workdir: Path  # Ray's --temp-dir: keep it short (Unix socket paths must fit 107 bytes)
    workers: int = 1
    cpus_per_node: int = 1
    head_cpus: int = 0  # tasks run on the worker nodes only, as on a real cluster
    object_store_bytes: int = OBJECT_STORE_BYTES
    port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    used_ports: set[int] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.used_ports.add(self.port)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._node(["--head", f"--port={self.port}", "--include-dashboard=false"], self.head_cpus)
        self._wait(self._head_listens, "the head to listen")
        for joined in range(1, self.workers + 1):  # one at a time: a loaded machine times out
            self._node([f"--address={self.address}"], self.cpus_per_node)
            self._wait(partial(self._has_nodes, 1 + joined), f"worker {joined}")

    def _node(self, role: list[str], cpus: int) -> None:
        ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
        names = [
            "node-manager-port",
            "object-manager-port",
            "runtime-env-agent-port",
            "dashboard-agent-grpc-port",
            "dashboard-agent-listen-port",
            "metrics-export-port",
            *(["ray-client-server-port"] if "--head" in role else []),
        ]
        ports = [
            f"--{name}={port}" for name, port in zip(names, self._ports(len(names)), strict=True)
        ]
        ports += ["--min-worker-port=0", "--max-worker-port=0"]  # workers: ports the OS picks
        log = open(self.workdir / f"node{len(self.processes)}.log", "wb")  # noqa: SIM115
        try:
            process = subprocess.Popen(
                [
                    ray,
                    "start",
                    *role,
                    "--block",
                    "--node-ip-address=127.0.0.1",
                    f"--num-cpus={cpus}",
                    f"--object-store-memory={self.object_store_bytes}",
                    f"--temp-dir={self.workdir}",
                    "--disable-usage-stats",
                    *ports,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **QUIET_ENV},
                start_new_session=True,
            )
        finally:
            log.close()
        self.processes.append(process)

    def _ports(self, count: int) -> list[int]:
        """Free loopback ports, none given twice in this cluster (the kernel may hand one
        out again once its probe socket is closed)."""
        chosen: list[int] = []
        while len(chosen) < count:  # bounded: the kernel has thousands of free ports
            port = free_port()
            if port not in self.used_ports:
                self.used_ports.add(port)
                chosen.append(port)
        return chosen

    def _wait(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for index, process in enumerate(self.processes):
                if process.poll() is not None:
                    log = (self.workdir / f"node{index}.log").read_text(errors="replace")
                    tail = " | ".join(log.strip().splitlines()[-5:])
                    raise OSError(f"Ray node {index} exited at start: {tail}")
            if condition():
                return
            time.sleep(0.1)
        raise OSError(f"Ray cluster at {self.address}: no {what} within {START_TIMEOUT_S} s")

    def _head_listens(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def _has_nodes(self, count: int) -> bool:
        return self.alive_nodes() >= count

    def alive_nodes(self) -> int:
        """Nodes alive in the cluster, asked of it by this process connected as a driver."""
        ray = connect(self.address).ray
        return sum(1 for node in ray.nodes() if node["Alive"])

    def stop_node(self, index: int) -> None:
        """Stop one node (0 is the head) by its pid: SIGTERM, then its process group."""
        process = self.processes[index]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_TIMEOUT_S)
        # what the node started (raylet, workers) shares its process group
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        disconnect()
        for index in reversed(range(len(self.processes))):
            self.stop_node(index)


@contextmanager
def local_ray_cluster(
    workdir: Path, workers: int = 1, cpus_per_node: int = 1
) -> Iterator[LocalRayCluster]:
    """A started cluster of a head (no CPUs for tasks) and `workers` worker nodes."""
    cluster = LocalRayCluster(workdir, workers=workers, cpus_per_node=cpus_per_node)
    try:
        cluster.start()
    except OSError as exc:
        cluster.stop()
        raise UsageError(f"could not start a local Ray cluster: {exc}") from exc
    try:
        yield cluster
    finally:
        cluster.stop()
