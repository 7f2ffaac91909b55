"""Argument types and options shared by several commands."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

DEFAULT_REPO = Path("feature_repo")
DEFAULT_REGISTRY = Path("models")

if TYPE_CHECKING:
    from serving.client import ClientCredentials

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time
    Subparsers = argparse._SubParsersAction


def repo_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repo",
        type=Path,
        default=DEFAULT_REPO,
        help="Feast feature repository (default: %(default)s)",
    )


def registry_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        type=Path,
        default=DEFAULT_REGISTRY,
        help="model registry folder (default: %(default)s)",
    )


def redis_url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis-url",
        type=_url_without_password,
        default=None,
        help="redis:// or rediss:// URL, no password (default: CARRARA_REDIS_URL, else "
        "feature_store.yaml); the password comes from CARRARA_REDIS_PASSWORD(_FILE)",
    )


def future_skew_option(parser: argparse.ArgumentParser) -> None:
    """--max-future-skew-s: how far ahead of this machine's clock a pushed event may be."""
    parser.add_argument(
        "--max-future-skew-s",
        type=float,
        default=300.0,
        help="refuse pushed events timed more than this far in the future (default 300)",
    )


def engine_options(parser: argparse.ArgumentParser) -> None:
    """--engine local|ray and --ray-address: where a batch command runs."""
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: a Ray cluster (pip install 'carrara[ray]')",
    )
    parser.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        default=None,
        help="with --engine ray: the cluster's head (`ray start --head` prints it; default: "
        "RAY_ADDRESS)",
    )


def ray_address(args: argparse.Namespace) -> str | None:
    """The --ray-address given, refused without --engine ray (it would be ignored)."""
    from serving.errors import UsageError

    if args.ray_address and args.engine != "ray":
        raise UsageError("--ray-address needs --engine ray")
    return str(args.ray_address) if args.ray_address else None


def _url_without_password(text: str) -> str:
    """A URL from the command line: a password in it would show in `ps` and shell history."""
    from serving.store.settings import url_has_password

    if url_has_password(text):
        raise argparse.ArgumentTypeError(
            "a password on the command line shows in `ps`: put it in CARRARA_REDIS_PASSWORD "
            "or a file named by CARRARA_REDIS_PASSWORD_FILE, or in CARRARA_REDIS_URL"
        )
    return text


def client_security_options(parser: argparse.ArgumentParser) -> None:
    """--tls-ca, --tls-cert/--tls-key and --token-file: a secured server's client side."""
    group = parser.add_argument_group("security (secrets are read from files, never argv)")
    group.add_argument(
        "--tls-ca",
        type=Path,
        metavar="FILE",
        help="CA certificate (PEM) the server's certificate must chain to; turns TLS on",
    )
    group.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="client certificate (PEM) for a server that requires one (mTLS); turns TLS on",
    )
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (PEM)")
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="file holding the bearer token (its first line), sent as authorization metadata",
    )


def client_credentials(args: argparse.Namespace) -> ClientCredentials:
    """The credentials `client_security_options` collected."""
    from serving.client import ClientCredentials
    from serving.credentials import TLSFiles

    tls = (
        TLSFiles(cert=args.tls_cert, key=args.tls_key, ca=args.tls_ca)
        if args.tls_ca or args.tls_cert or args.tls_key
        else None
    )
    return ClientCredentials(tls=tls, token_file=args.token_file)


def timestamp(text: str) -> datetime:
    """An ISO-8601 time; naive means UTC, as in Feast."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def count(text: str) -> int:
    """A whole number >= 0."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def positive(text: str) -> int:
    """A whole number >= 1."""
    value = count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value
