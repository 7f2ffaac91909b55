"""gRPC security against real servers: TLS, mutual TLS and bearer tokens, through the Python
client, raw stubs and the command line.

Certificates come from `openssl` in a module fixture: a CA, a server certificate for
127.0.0.1 and localhost, a client certificate, and a second CA with its own client (trusted by
nobody). Two servers over the materialized test world: `tls_server` (TLS + tokens file,
metrics on 127.0.0.1) and `mtls_server` (client certificates required, no reflection).
Tokens are random per run, so an assertion that a message or the log never shows one means
something. No test sleeps: a tokens-file change is taken by an explicit `reload()`, or by the
server's watcher within a `wait_until`.
"""

from __future__ import annotations

import secrets
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serving.cli import main
from serving.client import ClientCredentials, PredictionClient
from serving.credentials import TLSFiles
from serving.errors import UsageError
from serving.files import write_atomic
from serving.online.server import Server, ServerSettings
from serving.pb.carrara.v1 import prediction_pb2 as pb
from serving.pb.carrara.v1 import prediction_pb2_grpc as pb_grpc
from serving.store.redis_process import RedisProcess
from tests.helpers import RPC_TIMEOUT_S, materialize_world, run_python, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

ALL = secrets.token_urlsafe(24)  # may call everything
ETA = secrets.token_urlsafe(24)  # eta only
PRICING = secrets.token_urlsafe(24)  # pricing and raw features
UNKNOWN = secrets.token_urlsafe(24)  # in no file
TOKENS = f"""# test tokens
{ALL}
{ETA}   eta      # the ETA app
{PRICING}	pricing, features
"""
SECRETS = (ALL, ETA, PRICING, UNKNOWN)
ZONE_1: dict[str, list[int]] = {"zone_id": [1]}
ETA_ENTITIES: dict[str, list[int]] = {
    "driver_id": [17],
    "pickup_zone_id": [3],
    "dropoff_zone_id": [5],
}
ETA_REQUEST: dict[str, list[float] | list[int]] = {
    "pickup_lat": [44.07],
    "pickup_lon": [-103.2],
    "dropoff_lat": [44.09],
    "dropoff_lon": [-103.25],
    "request_ts_s": [1_800_000_000],
}


# --- certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA nobody trusts, and a client certificate it signed
    other_client_cert: Path
    other_client_key: Path
    encrypted_key: Path  # the server's key under a passphrase


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=30)


def _ca(folder: Path, name: str) -> None:
    _openssl(
        folder,
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )


def _signed(folder: Path, name: str, ca: str, extensions: str) -> None:
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(
        folder,
        *("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
        *("-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}"),
    )
    _openssl(
        folder,
        *("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key"),
        *("-set_serial", str(secrets.randbits(63)), "-days", "2", "-out", f"{name}.pem"),
        *("-extfile", f"{name}.ext"),
    )


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("certificates")
    _ca(folder, "ca")
    _ca(folder, "other-ca")
    server_ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    _signed(folder, "server", "ca", server_ext)
    _signed(folder, "client", "ca", "extendedKeyUsage=clientAuth\n")
    _signed(folder, "other-client", "other-ca", "extendedKeyUsage=clientAuth\n")
    _openssl(
        folder,
        *("pkey", "-in", "server.key", "-out", "encrypted.key", "-aes256", "-passout", "pass:x"),
    )
    return Certificates(
        *(folder / "ca.pem", folder / "server.pem", folder / "server.key"),
        *(folder / "client.pem", folder / "client.key"),
        *(folder / "other-ca.pem", folder / "other-client.pem", folder / "other-client.key"),
        folder / "encrypted.key",
    )


# --- servers and clients ------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_url(applied_repo: Path, redis_server: RedisProcess) -> str:
    """The session's redis-server, running, holding the materialized test world."""
    if redis_server.process is None:  # a test module stopped it
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    materialize_world(applied_repo, redis_server.url)
    return redis_server.url


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text(TOKENS)
    return path


def _serve(settings: ServerSettings) -> Iterator[Server]:
    server = Server(settings)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_server(
    applied_repo: Path,
    served_registry: Path,
    world_url: str,
    certificates: Certificates,
    tokens_file: Path,
) -> Iterator[Server]:
    yield from _serve(
        ServerSettings(
            repo=applied_repo,
            registry=served_registry,
            port=0,
            redis_url=world_url,
            metrics_port=0,
            metrics_host="127.0.0.1",
            watch_interval_s=0.2,
            tls=TLSFiles(cert=certificates.server_cert, key=certificates.server_key),
            auth_tokens=tokens_file,
        )
    )


@pytest.fixture(scope="module")
def mtls_server(
    applied_repo: Path, served_registry: Path, world_url: str, certificates: Certificates
) -> Iterator[Server]:
    yield from _serve(
        ServerSettings(
            repo=applied_repo,
            registry=served_registry,
            port=0,
            redis_url=world_url,
            tls=TLSFiles(
                cert=certificates.server_cert, key=certificates.server_key, ca=certificates.ca
            ),
            reflection=False,
        )
    )


@pytest.fixture(scope="module")
def token_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One client token file per token, keyed by the token's name."""
    folder = tmp_path_factory.mktemp("client-tokens")
    files = {}
    for name, token in (("all", ALL), ("eta", ETA), ("pricing", PRICING), ("unknown", UNKNOWN)):
        files[name] = folder / name
        files[name].write_text(f"{token}\n")
    return files


def target(server: Server) -> str:
    return f"127.0.0.1:{server.port}"


def tls_client(
    server: Server,
    certificates: Certificates,
    token_file: Path | None = None,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
) -> PredictionClient:
    tls = TLSFiles(ca=ca or certificates.ca, cert=cert, key=key)
    credentials = ClientCredentials(tls=tls, token_file=token_file)
    return PredictionClient(target(server), RPC_TIMEOUT_S, credentials)


def rpc_error(call: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.RpcError:
    """The RpcError `call(*args, **kwargs)` raises (failing the test if none)."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    error: grpc.RpcError = info.value
    return error


def tls_channel(server: Server, certificates: Certificates) -> grpc.Channel:
    ca = certificates.ca.read_bytes()
    return grpc.secure_channel(target(server), grpc.ssl_channel_credentials(root_certificates=ca))


def predict_eta(client: PredictionClient, model: str = "eta") -> pb.PredictResponse:
    return client.predict(model, ETA_ENTITIES, ETA_REQUEST)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for token in SECRETS:
            assert token not in text


# --- TLS ----------------------------------------------------------------------------------


def test_a_plaintext_client_cannot_call_a_tls_server(tls_server: Server) -> None:
    with grpc.insecure_channel(target(tls_server)) as channel:
        error = rpc_error(
            lambda: health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S
            )
        )
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_a_tls_client_with_a_token_predicts(
    tls_server: Server, certificates: Certificates, token_files: dict[str, Path]
) -> None:
    with tls_client(tls_server, certificates, token_files["all"]) as client:
        reply = predict_eta(client)
        assert (reply.model, reply.model_version) == ("eta", "1")
        assert len(reply.predictions) == 1


def test_a_client_that_does_not_trust_the_servers_ca_fails(
    tls_server: Server, certificates: Certificates, token_files: dict[str, Path]
) -> None:
    with tls_client(tls_server, certificates, token_files["all"], ca=certificates.other_ca) as c:
        assert rpc_error(c.list_models).code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_client_without_a_certificate_it_trusts(
    mtls_server: Server, certificates: Certificates
) -> None:
    with tls_client(mtls_server, certificates) as client:
        assert rpc_error(client.list_models).code() == grpc.StatusCode.UNAVAILABLE
    with tls_client(
        mtls_server,
        certificates,
        cert=certificates.other_client_cert,
        key=certificates.other_client_key,
    ) as client:
        assert rpc_error(client.list_models).code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_serves_a_client_with_a_certificate(
    mtls_server: Server, certificates: Certificates
) -> None:
    with tls_client(
        mtls_server, certificates, cert=certificates.client_cert, key=certificates.client_key
    ) as client:
        assert {m.name for m in client.list_models().models} == {"eta", "pricing"}
        assert predict_eta(client).model_version == "1"


def test_reflection_can_be_turned_off(mtls_server: Server, certificates: Certificates) -> None:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certificates.ca.read_bytes(),
        private_key=certificates.client_key.read_bytes(),
        certificate_chain=certificates.client_cert.read_bytes(),
    )
    with grpc.secure_channel(target(mtls_server), credentials) as channel:
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            timeout=RPC_TIMEOUT_S,
        )
        assert rpc_error(lambda: list(replies)).code() == grpc.StatusCode.UNIMPLEMENTED
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING


# --- tokens -------------------------------------------------------------------------------


def test_health_needs_no_token(tls_server: Server, certificates: Certificates) -> None:
    with tls_channel(tls_server, certificates) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "carrara.v1.PredictionService", "eta"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


def test_a_call_without_a_token_is_unauthenticated(
    tls_server: Server, certificates: Certificates
) -> None:
    with tls_client(tls_server, certificates) as client:
        for call in (lambda: predict_eta(client), client.list_models):
            error = rpc_error(call)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer <token>" in error.details()


def test_an_unknown_token_is_unauthenticated_and_never_echoed(
    tls_server: Server,
    certificates: Certificates,
    token_files: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with tls_client(tls_server, certificates, token_files["unknown"]) as client:
        error = rpc_error(lambda: predict_eta(client))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not one this server accepts" in error.details()
    assert_no_secret(error.details(), caplog.text)


def test_another_scheme_than_bearer_is_unauthenticated(
    tls_server: Server, certificates: Certificates
) -> None:
    with tls_channel(tls_server, certificates) as channel:
        stub = pb_grpc.PredictionServiceStub(channel)
        for value in (f"Basic {ALL}", "Bearer", "Bearer "):
            metadata = (("authorization", value),)
            error = rpc_error(stub.ListModels, pb.ListModelsRequest(), timeout=5, metadata=metadata)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, value
            assert_no_secret(error.details())
        reply = stub.ListModels(  # the scheme is case-insensitive (RFC 7235)
            pb.ListModelsRequest(), timeout=5, metadata=(("authorization", f"bearer {ALL}"),)
        )
        assert len(reply.models) == 2


def test_a_token_limited_to_eta_may_call_eta_only(
    tls_server: Server, certificates: Certificates, token_files: dict[str, Path]
) -> None:
    with tls_client(tls_server, certificates, token_files["eta"]) as client:
        for ref in ("eta", "eta@production", "eta:1"):
            assert predict_eta(client, ref).model == "eta"
        for ref in ("pricing", "pricing:1", "no_such_model"):  # never NOT_FOUND: no probing
            error = rpc_error(client.predict, ref, ZONE_1)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, ref
            assert f"may not call model '{ref.partition(':')[0]}'" in error.details()
        assert [m.name for m in client.list_models().models] == ["eta"]
        error = rpc_error(lambda: client.online_features({"zone_id": [1]}, "pricing_v1"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "`features`" in error.details()
        error = rpc_error(lambda: client.push("any_source", ZONE_1))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "`push`" in error.details()


def test_push_needs_a_token_that_may_push(
    tls_server: Server, certificates: Certificates, token_files: dict[str, Path]
) -> None:
    """A token alone may call everything: its push reaches the handler (the sample world has
    no push source, so: NOT_FOUND, naming it)."""
    with tls_client(tls_server, certificates, token_files["all"]) as client:
        error = rpc_error(lambda: client.push("no_such_source", ZONE_1))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "no push source 'no_such_source'" in error.details()


def test_a_token_listing_features_reads_online_features(
    tls_server: Server, certificates: Certificates, token_files: dict[str, Path]
) -> None:
    with tls_client(tls_server, certificates, token_files["pricing"]) as client:
        reply = client.online_features({"zone_id": [1]}, features=["zone_stats:rain_mm"])
        assert [c.name for c in reply.features] == ["zone_stats__rain_mm"]
        assert [m.name for m in client.list_models().models] == ["pricing"]
        error = rpc_error(lambda: predict_eta(client))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_reflection_needs_a_token(tls_server: Server, certificates: Certificates) -> None:
    def services(metadata: tuple[tuple[str, str], ...]) -> set[str]:
        with tls_channel(tls_server, certificates) as channel:
            replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                timeout=RPC_TIMEOUT_S,
                metadata=metadata,
            )
            return {s.name for r in replies for s in r.list_services_response.service}

    assert rpc_error(lambda: services(())).code() == grpc.StatusCode.UNAUTHENTICATED
    assert "carrara.v1.PredictionService" in services((("authorization", f"Bearer {ETA}"),))


def test_refusals_are_counted_in_the_metrics_served_on_their_own_host(
    tls_server: Server, certificates: Certificates, token_files: dict[str, Path]
) -> None:
    with tls_client(tls_server, certificates) as client:
        rpc_error(client.list_models)
    with tls_client(tls_server, certificates, token_files["eta"]) as client:
        rpc_error(lambda: client.predict("pricing", {"zone_id": [1]}))
    url = f"http://127.0.0.1:{tls_server.metrics_port}/metrics"
    body = urllib.request.urlopen(url, timeout=RPC_TIMEOUT_S).read().decode()
    assert 'carrara_requests_total{code="UNAUTHENTICATED",method="ListModels",model=""}' in body
    assert 'code="PERMISSION_DENIED",method="Predict",model="pricing"' in body


# --- the tokens file changes --------------------------------------------------------------


@pytest.fixture
def restore_tokens(tokens_file: Path, tls_server: Server) -> Iterator[None]:
    yield
    write_atomic(tokens_file, TOKENS)
    assert tls_server.tokens is not None
    tls_server.tokens.reload()


def test_an_edited_tokens_file_is_taken_without_a_restart(
    tls_server: Server,
    certificates: Certificates,
    tokens_file: Path,
    token_files: dict[str, Path],
    restore_tokens: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert tls_server.tokens is not None
    write_atomic(tokens_file, f"{ALL}\n{UNKNOWN} pricing\n")  # UNKNOWN added, ETA revoked
    tls_server.tokens.reload()  # (or the watcher took it first: the same table either way)
    with tls_client(tls_server, certificates, token_files["unknown"]) as client:
        assert [m.name for m in client.list_models().models] == ["pricing"]
    with tls_client(tls_server, certificates, token_files["eta"]) as client:
        assert rpc_error(client.list_models).code() == grpc.StatusCode.UNAUTHENTICATED
    assert "2 tokens (1 limited to some models)" in caplog.text
    assert_no_secret(caplog.text)


def test_a_broken_tokens_file_keeps_the_tokens_loaded_before(
    tls_server: Server,
    certificates: Certificates,
    tokens_file: Path,
    token_files: dict[str, Path],
    restore_tokens: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert tls_server.tokens is not None
    write_atomic(tokens_file, f"{UNKNOWN}\n{ALL[:10]}\n")  # line 2: too short
    assert tls_server.tokens.reload() is False
    with tls_client(tls_server, certificates, token_files["eta"]) as client:
        assert predict_eta(client).model == "eta"
    with tls_client(tls_server, certificates, token_files["unknown"]) as client:
        assert rpc_error(client.list_models).code() == grpc.StatusCode.UNAUTHENTICATED
    assert f"tokens file {tokens_file} line 2: a token of fewer than 16" in caplog.text
    assert_no_secret(caplog.text)
    assert ALL[:10] not in caplog.text


def test_the_server_watches_the_tokens_file(
    tls_server: Server,
    certificates: Certificates,
    tokens_file: Path,
    token_files: dict[str, Path],
    restore_tokens: None,
) -> None:
    write_atomic(tokens_file, f"{TOKENS}{UNKNOWN} eta\n")
    with tls_client(tls_server, certificates, token_files["unknown"]) as client:

        def accepted() -> bool:
            try:
                client.list_models()
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise
                return False
            return True

        wait_until(accepted, timeout_s=10, what="the new token accepted")


# --- bad configuration --------------------------------------------------------------------


def settings_with(applied_repo: Path, registry: Path, **changes: Any) -> ServerSettings:
    return ServerSettings(repo=applied_repo, registry=registry, port=0, **changes)


def test_bad_certificate_key_and_tokens_files_are_one_line_naming_the_file(
    applied_repo: Path,
    served_registry: Path,
    certificates: Certificates,
    tmp_path: Path,
) -> None:
    c = certificates
    bad_tokens = tmp_path / "tokens"
    bad_tokens.write_text(f"{ALL}\n{ETA} eta pricing\n")
    cases = [
        (TLSFiles(cert=tmp_path / "nope.pem", key=c.server_key), None, "nope.pem: no such file"),
        (TLSFiles(cert=c.server_key, key=c.server_key), None, "no PEM certificate in it"),
        (TLSFiles(cert=c.server_cert, key=c.server_cert), None, "no PEM private key in it"),
        (TLSFiles(cert=c.server_cert, key=c.client_key), None, "does not belong to the cert"),
        (TLSFiles(cert=c.server_cert, key=c.encrypted_key), None, "is encrypted"),
        (TLSFiles(cert=c.server_cert), None, "give both --tls-cert and --tls-key"),
        (TLSFiles(ca=c.ca), None, "--tls-client-ca needs --tls-cert and --tls-key"),
        (TLSFiles(c.server_cert, c.server_key, c.server_key), None, "no PEM certificate"),
        (None, tmp_path / "missing", "tokens file"),
        (None, bad_tokens, "line 2: name 1 of its list is no model name"),
    ]
    for tls, tokens, needle in cases:
        settings = settings_with(applied_repo, served_registry, tls=tls, auth_tokens=tokens)
        with pytest.raises(UsageError) as info:
            Server(settings)
        message = str(info.value)
        assert needle in message, (needle, message)
        assert "\n" not in message
        assert_no_secret(message)
        assert "PRIVATE KEY" not in message


# --- the command line ---------------------------------------------------------------------


def predict_args(server: Server, *extra: str) -> list[str]:
    entities = [f"--entity={k}={v[0]}" for k, v in ETA_ENTITIES.items()]
    request = [f"--request={k}={v[0]}" for k, v in ETA_REQUEST.items()]
    return ["predict", "--target", target(server), "--model", "eta", *entities, *request, *extra]


def test_carrara_predict_over_tls_with_a_token(
    tls_server: Server,
    certificates: Certificates,
    token_files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    tls = ("--tls-ca", str(certificates.ca))
    code = main(predict_args(tls_server, *tls, "--token-file", str(token_files["eta"])))
    assert code == 0
    assert "model eta version 1" in capsys.readouterr().out
    code = main(predict_args(tls_server, *tls, "--token-file", str(token_files["pricing"])))
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "PERMISSION_DENIED" in err
    assert_no_secret(err)


def test_carrara_predict_with_mtls(
    mtls_server: Server, certificates: Certificates, capsys: pytest.CaptureFixture[str]
) -> None:
    c = certificates
    mtls = ("--tls-cert", str(c.client_cert), "--tls-key", str(c.client_key))
    code = main(predict_args(mtls_server, "--tls-ca", str(c.ca), *mtls))
    assert code == 0, capsys.readouterr().err
    assert "model eta version 1" in capsys.readouterr().out


def test_carrara_predict_with_a_bad_certificate_path_is_one_line(
    tls_server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(predict_args(tls_server, "--tls-ca", str(tmp_path / "ca.pem")))
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"carrara predict: TLS CA certificate {tmp_path / 'ca.pem'}: no such file\n"


def test_carrara_predict_in_plaintext_to_a_tls_server_hints_at_tls(
    tls_server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(predict_args(tls_server))
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith(f"carrara predict: UNAVAILABLE from {target(tls_server)}: ")
    assert err.endswith("(if the server serves TLS, give --tls-ca)\n")


def test_carrara_serve_with_a_bad_key_is_one_line_and_exit_2(
    applied_repo: Path, served_registry: Path, certificates: Certificates
) -> None:
    result = run_python(
        [
            *("-m", "serving.cli", "serve", "--repo", str(applied_repo)),
            *("--registry", str(served_registry), "--port", "0"),
            *("--tls-cert", str(certificates.server_cert)),
            *("--tls-key", str(certificates.client_key)),
        ],
        timeout_s=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "does not belong to the certificate" in result.stderr


def test_check_consistency_over_tls_with_a_token(
    tls_server: Server,
    applied_repo: Path,
    served_registry: Path,
    certificates: Certificates,
    token_files: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "check-consistency",
            *("--target", target(tls_server), "--model", "eta", "--sample", "20"),
            *("--repo", str(applied_repo), "--registry", str(served_registry)),
            *("--tls-ca", str(certificates.ca), "--token-file", str(token_files["eta"])),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "online and offline agree exactly" in out
