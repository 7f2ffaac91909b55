"""`carrara predict`: a command-line client for a running server."""

from __future__ import annotations

import argparse

from serving.cli.arguments import Subparsers, client_credentials, client_security_options


def add(commands: Subparsers) -> None:
    p = commands.add_parser("predict", help="ask a running server for predictions")
    p.add_argument(
        "--target", default="127.0.0.1:50051", help="server address (default: %(default)s)"
    )
    p.add_argument("--model", required=True, help='"eta", "eta@staging" or "eta:3"')
    p.add_argument(
        "--entity",
        action="append",
        default=[],
        metavar="KEY=V1[,V2...]",
        help="a join key and its values, one per row (repeatable)",
    )
    p.add_argument(
        "--request",
        action="append",
        default=[],
        metavar="FIELD=V1[,V2...]",
        help="a request field and its values, one per row (repeatable)",
    )
    p.add_argument("--features", action="store_true", help="print the feature vectors too")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds (default: %(default)s)")
    client_security_options(p)
    p.set_defaults(run=run)


def parse_assignments(
    items: list[str], flag: str
) -> dict[str, list[int] | list[float] | list[str]]:
    """`name=1,2,3` -> {"name": [1, 2, 3]}; ints, then floats, else strings."""
    from serving.errors import UsageError

    columns: dict[str, list[int] | list[float] | list[str]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name or not text:
            raise UsageError(f"{flag} {item!r}: expected NAME=VALUE[,VALUE...]")
        raw = text.split(",")
        for convert in (int, float):
            try:
                columns[name] = [convert(v) for v in raw]
                break
            except ValueError:
                continue
        else:
            columns[name] = raw
    return columns


def run(args: argparse.Namespace) -> int:
    import math
    import os

    # grpc's own INFO lines (a failed TLS handshake) would precede the one line said below
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    import grpc

    from serving.client import PredictionClient
    from serving.errors import CarraraError, UsageError

    # the request or the caller's credentials are wrong: exit 2, like a bad argument
    caller_mistakes = (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    )

    entities = parse_assignments(args.entity, "--entity")
    request_data = parse_assignments(args.request, "--request")
    credentials = client_credentials(args)
    with PredictionClient(args.target, args.timeout, credentials) as client:
        try:
            reply = client.predict(
                args.model, entities, request_data, return_features=args.features
            )
        except grpc.RpcError as exc:
            code = exc.code()
            message = f"{code.name} from {args.target}: {exc.details()}"
            if code == grpc.StatusCode.UNAVAILABLE and credentials.tls is None:
                message += " (if the server serves TLS, give --tls-ca)"
            raise (UsageError if code in caller_mistakes else CarraraError)(message) from None
    print(f"model {reply.model} version {reply.model_version}")
    for row, (prediction, missing) in enumerate(
        zip(reply.predictions, reply.missing_features, strict=True)
    ):
        print(f"  row {row}: prediction {prediction:.4f}  missing features {missing}")
        if args.features:
            for name, value in zip(reply.feature_names, reply.features[row].values, strict=True):
                print(f"      {name:<40} {'missing' if math.isnan(value) else f'{value:.6g}'}")
    return 0
