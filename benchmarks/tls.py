"""Benchmark: what TLS, mutual TLS and a bearer token cost a 1-row ETA `Predict`, against
plaintext, in one run on one private world.

The world is prepared as benchmarks/online.py prepares it (a private redis-server, the
sample world with a fixed seed, `carrara apply`, models trained or copied from --models,
features materialized fresh). `openssl` makes a CA, a server certificate for 127.0.0.1 and a
client certificate. One `carrara serve` per variant runs as its own process (`--port 0`; the
port is read from its ready line), all at once:
  plaintext   no security: the baseline
  tls         --tls-cert/--tls-key
  mtls        TLS + --tls-client-ca (the client presents its certificate)
  tls+token   TLS + --auth-tokens (the interceptor: metadata, SHA-256, constant-time compare)
From this process, one call at a time:
  latency   1-row ETA Predict on a warm channel. In rounds: each round measures every
            variant in turn (the order rotating), so drift on a shared machine hits all
            alike. p50/p90/p99/max per variant.
  connect   a new channel's first Predict: TCP, the TLS handshake, HTTP/2 set-up and the call.
Every variant must return the same predictions for the same requests. Printed last: each
variant's p50 against plaintext.

    python -m benchmarks.tls [--small] [--models DIR] [--out benchmarks/out/tls.json]

Every process it starts (redis-server, servers) is stopped by its pid, also on failure.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, latency, redis_server, stamp, stop_tree, table, write_json
from benchmarks.online import BIN, World, config, predict_request, prepare_world, request_pool

VARIANTS = ("plaintext", "tls", "mtls", "tls+token")
READY = re.compile(r" on 127\.0\.0\.1:(\d+) \(ready in")


@dataclass(frozen=True)
class Sizes:
    rounds: int
    calls_per_round: int  # per variant
    warmup: int
    connects: int  # new channels per variant
    pool: int  # distinct requests, cycled


FULL = Sizes(rounds=10, calls_per_round=500, warmup=300, connects=100, pool=64)
SMALL = Sizes(rounds=2, calls_per_round=25, warmup=10, connects=3, pool=8)


# --- certificates and servers -----------------------------------------------------------


@dataclass(frozen=True)
class Secrets:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    tokens: Path  # the server's tokens file
    token: str


def make_secrets(folder: Path) -> Secrets:
    """A CA (EC P-256, as a modern deployment would), a server certificate for 127.0.0.1 and
    localhost, a client certificate, and a tokens file with one token limited to eta."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        *("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2"),
        *("-subj", "/CN=bench-ca", "-addext", "basicConstraints=critical,CA:TRUE"),
    )
    for name, extensions in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (folder / f"{name}.ext").write_text(extensions)
        openssl(
            *("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr"),
            *("-subj", f"/CN={name}"),
        )
        openssl(
            *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key"),
            *("-set_serial", str(secrets.randbits(63)), "-days", "2", "-out", f"{name}.pem"),
            *("-extfile", f"{name}.ext"),
        )
    token = secrets.token_urlsafe(32)
    (folder / "tokens").write_text(f"{token} eta\n")
    return Secrets(
        *(folder / "ca.pem", folder / "server.pem", folder / "server.key"),
        *(folder / "client.pem", folder / "client.key", folder / "tokens"),
        token,
    )


def serve_flags(variant: str, s: Secrets) -> list[str]:
    tls = ["--tls-cert", str(s.server_cert), "--tls-key", str(s.server_key)]
    return {
        "plaintext": [],
        "tls": tls,
        "mtls": [*tls, "--tls-client-ca", str(s.ca)],
        "tls+token": [*tls, "--auth-tokens", str(s.tokens)],
    }[variant]


@contextmanager
def carrara_servers(world: World, work: Path, s: Secrets) -> Iterator[dict[str, int]]:
    """One `carrara serve` per variant, started together, each on a port of its choosing;
    yields variant -> port once all are ready, and stops them all by pid."""
    processes: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    try:
        for variant in VARIANTS:
            log = work / f"serve-{variant.replace('+', '-')}.log"
            with log.open("wb") as out:
                processes[variant] = (
                    subprocess.Popen(
                        [
                            *(str(BIN / "carrara"), "serve", "--repo", str(world.repo)),
                            *("--registry", str(world.registry), "--redis-url", world.redis_url),
                            *("--port", "0", "--threads", "2", *serve_flags(variant, s)),
                        ],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        cwd=ROOT,
                    ),
                    log,
                )
        deadline = time.monotonic() + 120
        ports = {}
        for variant, (process, log) in processes.items():
            while (found := READY.search(log.read_text())) is None:  # bounded by the deadline
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text()[-2000:]
                    raise RuntimeError(f"{variant} server did not start:\n{tail}")
                time.sleep(0.01)
            ports[variant] = int(found.group(1))
        yield ports
    finally:
        for process, _log in processes.values():
            stop_tree(process)


# --- clients ------------------------------------------------------------------------------


def channel_factory(variant: str, port: int, s: Secrets) -> Callable[[], Any]:
    import grpc

    target = f"127.0.0.1:{port}"
    if variant == "plaintext":
        return lambda: grpc.insecure_channel(target)
    mtls = variant == "mtls"
    credentials = grpc.ssl_channel_credentials(
        root_certificates=s.ca.read_bytes(),
        private_key=s.client_key.read_bytes() if mtls else None,
        certificate_chain=s.client_cert.read_bytes() if mtls else None,
    )
    return lambda: grpc.secure_channel(target, credentials)


class Caller:
    """One variant's warm channel and requests: `call()` sends the next request."""

    def __init__(
        self, variant: str, new_channel: Callable[[], Any], requests: list[Any], s: Secrets
    ) -> None:
        from serving.pb.carrara.v1 import prediction_pb2_grpc as pb_grpc

        self.variant = variant
        self.new_channel = new_channel
        self.requests = requests
        self.metadata = (
            (("authorization", f"Bearer {s.token}"),) if variant == "tls+token" else None
        )
        self.channel = new_channel()
        self.stub = pb_grpc.PredictionServiceStub(self.channel)
        self._next = 0

    def call(self) -> Any:
        request = self.requests[self._next % len(self.requests)]
        self._next += 1
        return self.stub.Predict(request, timeout=10, metadata=self.metadata)

    def connect(self) -> None:
        """A new channel's first call, then close it."""
        from serving.pb.carrara.v1 import prediction_pb2_grpc as pb_grpc

        channel = self.new_channel()
        try:
            stub = pb_grpc.PredictionServiceStub(channel)
            stub.Predict(self.requests[0], timeout=10, metadata=self.metadata)
        finally:
            channel.close()


def measure_variants(callers: list[Caller], sizes: Sizes) -> dict[str, dict[str, Any]]:
    samples: dict[str, list[int]] = {c.variant: [] for c in callers}
    connects: dict[str, list[int]] = {c.variant: [] for c in callers}
    for caller in callers:
        for _ in range(sizes.warmup):
            caller.call()
    for round_ in range(sizes.rounds):
        shift = round_ % len(callers)
        for caller in callers[shift:] + callers[:shift]:
            for _ in range(sizes.calls_per_round):
                started = time.perf_counter_ns()
                caller.call()
                samples[caller.variant].append(time.perf_counter_ns() - started)
    for i in range(sizes.connects):
        shift = i % len(callers)
        for caller in callers[shift:] + callers[:shift]:
            started = time.perf_counter_ns()
            caller.connect()
            connects[caller.variant].append(time.perf_counter_ns() - started)
    return {
        c.variant: {
            "latency": asdict(latency(samples[c.variant])),
            "connect": asdict(latency(connects[c.variant])),
        }
        for c in callers
    }


def same_predictions(callers: list[Caller]) -> bool:
    """Every variant answers every request of the pool with the same predictions."""
    answers = {
        c.variant: [
            list(c.stub.Predict(r, timeout=10, metadata=c.metadata).predictions) for r in c.requests
        ]
        for c in callers
    }
    first = answers[callers[0].variant]
    return all(a == first for a in answers.values())


# --- the run ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "tls.json")
    parser.add_argument("--workdir", type=Path, default=None, help="kept after the run if given")
    parser.add_argument(
        "--models",
        type=Path,
        default=None,
        help="copy this model registry (eta) instead of training",
    )
    args = parser.parse_args(argv)
    sizes = SMALL if args.small else FULL
    world_cfg = config(argparse.Namespace(small=args.small, processes=(1,), threads=2, clients=1))
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))  # unwind: stop by pid
    work = args.workdir or Path(tempfile.mkdtemp(prefix="carrara-tls-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {**stamp(), "small": args.small, "sizes": asdict(sizes)}
    try:
        with ExitStack() as stack:
            redis_port = stack.enter_context(redis_server(work))
            print(f"world ({world_cfg.world}) on redis-server :{redis_port}")
            world = prepare_world(world_cfg, work, redis_port, args.models)
            keys = make_secrets(work)
            requests = [
                predict_request("eta", inputs)
                for inputs in request_pool(world, "eta", 1, sizes.pool)
            ]
            ports = stack.enter_context(carrara_servers(world, work, keys))
            callers = []
            for variant, port in ports.items():
                channel = channel_factory(variant, port, keys)
                callers.append(Caller(variant, channel, requests, keys))
                stack.callback(callers[-1].channel.close)
            out["same_predictions"] = same_predictions(callers)
            out["load_average_before"] = os.getloadavg()
            out["results"] = measure_variants(callers, sizes)
            out["load_average_after"] = os.getloadavg()
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    base = out["results"]["plaintext"]
    out["p50_ratio_to_plaintext"] = {
        v: r["latency"]["p50_ms"] / base["latency"]["p50_ms"] for v, r in out["results"].items()
    }
    write_json(args.out, out)
    print_summary(out)
    print(f"-> {args.out}")
    return 0 if out["same_predictions"] else 1


def print_summary(out: dict[str, Any]) -> None:
    rows = [
        [
            variant,
            r["latency"]["count"],
            r["latency"]["p50_ms"],
            r["latency"]["p90_ms"],
            r["latency"]["p99_ms"],
            r["latency"]["max_ms"],
            r["connect"]["p50_ms"],
            r["connect"]["max_ms"],
        ]
        for variant, r in out["results"].items()
    ]
    headers = ["variant", "calls", "p50 ms", "p90 ms", "p99 ms", "max ms", "connect p50", "max"]
    print()
    print("ETA 1-row Predict, warm channel; connect = a new channel's first call")
    print(table(rows, headers))
    print(f"same predictions from every variant: {out['same_predictions']}")
    load = ", ".join(f"{a:.1f}" for a in out["load_average_after"])
    print(f"load average after the measurement (1, 5, 15 min): {load}")
    base = out["results"]["plaintext"]["latency"]["p50_ms"]
    print()
    for variant, ratio in out["p50_ratio_to_plaintext"].items():
        if variant != "plaintext":
            extra_us = (out["results"][variant]["latency"]["p50_ms"] - base) * 1000
            print(f"p50 {variant} / plaintext: {ratio:.3f} ({extra_us:+.0f} us)")


if __name__ == "__main__":
    sys.exit(main())
