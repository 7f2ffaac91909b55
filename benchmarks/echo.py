"""A bare grpcio echo service: the floor that `benchmarks/online.py` measures Carrara against.

One unary method, bytes in and the same bytes out, no protobuf parsing and no work: what any
Python gRPC service costs on this machine before it does anything. Served the way Carrara's
server is (grpcio's sync server on a thread pool) or, for the concurrency study, on grpc.aio.
The standard health service is served too, so a caller can poll for SERVING.

    python -m benchmarks.echo --port 50099 [--threads 8] [--mode sync|aio]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "carrara.bench.Echo"
METHOD = f"/{SERVICE}/Echo"


def echo_method(channel: grpc.Channel) -> Any:
    """The client side: a callable taking and returning bytes."""
    return channel.unary_unary(METHOD, _registered_method=True)


def _handlers(aio: bool) -> grpc.GenericRpcHandler:
    if aio:

        async def echo_async(request: bytes, _context: Any) -> bytes:
            return request

        method = grpc.unary_unary_rpc_method_handler(echo_async)
    else:
        method = grpc.unary_unary_rpc_method_handler(lambda request, _context: request)
    return grpc.method_handlers_generic_handler(SERVICE, {"Echo": method})


def _health(server: Any) -> None:
    servicer = health.HealthServicer()
    servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)


def serve_sync(port: int, threads: int) -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=threads))
    server.add_generic_rpc_handlers((_handlers(aio=False),))
    _health(server)
    _bind(server, port)
    server.start()
    print(f"echo (sync, {threads} threads) on 127.0.0.1:{port}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _s, _f: done.set())
    done.wait()
    server.stop(0.5).wait()


async def serve_aio(port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(aio=True),))
    _health(server)
    _bind(server, port)
    await server.start()
    print(f"echo (aio) on 127.0.0.1:{port}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    await server.stop(0.5)


def _bind(server: Any, port: int) -> None:
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"cannot bind 127.0.0.1:{port}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=8, help="sync mode's thread pool")
    parser.add_argument("--mode", choices=("sync", "aio"), default="sync")
    args = parser.parse_args(argv)
    if args.mode == "aio":
        asyncio.run(serve_aio(args.port))
    else:
        serve_sync(args.port, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
