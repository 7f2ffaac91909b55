"""A hung RPC fails its test instead of hanging the run: pytest-timeout, as configured in
pyproject.toml, interrupts a gRPC call that never gets its reply (the server holds it).

Tests give their RPCs a deadline (helpers.RPC_TIMEOUT_S); this guards the case one is missed.
"""

from __future__ import annotations

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.integration

pytest_plugins = ["pytester"]

HUNG = """
import threading
from concurrent import futures

import grpc


def test_a_call_the_server_never_answers() -> None:
    release = threading.Event()

    def hold(request: bytes, context: grpc.ServicerContext) -> bytes:
        release.wait()
        return request

    handler = grpc.unary_unary_rpc_method_handler(hold)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    hang = grpc.method_handlers_generic_handler("t.Hang", {"Hold": handler})
    server.add_generic_rpc_handlers([hang])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            channel.unary_unary("/t.Hang/Hold")(b"x")  # no deadline: waits for ever
    finally:
        release.set()
        server.stop(0)
"""


def test_a_hung_grpc_call_fails_by_timeout(pytester: pytest.Pytester) -> None:
    hung = pytester.makepyfile(test_hung=HUNG)
    result = pytester.runpytest_subprocess(
        *("-c", str(ROOT / "pyproject.toml"), "--rootdir", str(pytester.path)),
        *("-p", "no:cacheprovider", "--timeout", "2", str(hung)),
        timeout=60,
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Timeout (>2.0s) from pytest-timeout*"])
