"""The driver's connection to a Ray cluster, by address, with a bounded wait.

`ray.init` on an address where nothing answers retries for minutes; a TCP probe with a timeout
first turns that into one clear error naming the address. A process stays connected to one
cluster at a time: asking for another address disconnects from the first.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from serving.errors import UsageError

CONNECT_TIMEOUT_S = 5.0
ENV_ADDRESS = "RAY_ADDRESS"
# Ray's own knobs, for the driver (and the nodes local_cluster.py starts): no usage report,
# GCS calls give up instead of retrying for minutes
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_gcs_rpc_server_connect_timeout_s": "10",
}


def resolve_address(address: str | None) -> str:
    """--ray-address, else RAY_ADDRESS; "host:port" of the cluster's head (GCS)."""
    chosen = address or os.environ.get(ENV_ADDRESS)
    if not chosen:
        raise UsageError("--engine ray needs --ray-address HOST:PORT (or RAY_ADDRESS)")
    return chosen


@dataclass(frozen=True)
class Cluster:
    """The `ray` module, connected as a driver to the cluster at `address`."""

    ray: Any
    address: str  # as given: Ray reports the head's own address, which may be another one

    @property
    def cpus(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))


_connected: dict[str, Cluster] = {}  # this process's one connection, by address


def connect(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S) -> Cluster:
    """This process connected to the cluster at `address` (or RAY_ADDRESS)."""
    target = resolve_address(address)
    if target in _connected:
        return _connected[target]
    _probe(target, timeout_s)
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'carrara[ray]'") from None

    if ray.is_initialized():
        ray.shutdown()
        _connected.clear()
    try:
        ray.init(
            address=target,
            log_to_driver=False,
            logging_level=logging.ERROR,
            include_dashboard=False,
            configure_logging=False,
        )
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        raise UsageError(f"no reachable Ray cluster at {target}: {exc}") from exc
    _connected[target] = Cluster(ray, target)
    return _connected[target]


def disconnect() -> None:
    """Leave the cluster (before it is stopped, so that no reconnect attempt follows)."""
    if _connected:
        _connected.clear()
        import ray

        ray.shutdown()


def _probe(address: str, timeout_s: float) -> None:
    if "://" in address:
        raise UsageError(
            f"Ray address {address!r}: give the head's HOST:PORT (the port `ray start --head` "
            "prints), not a Ray Client URL"
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"Ray address {address!r} is not HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise UsageError(
            f"no reachable Ray cluster at {address} ({exc.strerror or exc}): start one with "
            f"`ray start --head --port {port}` or pass its address with --ray-address"
        ) from None
