"""TLS certificates, private keys and bearer tokens read from files, checked before grpc
sees them: the one place the server and the client read their secrets.

grpc reports a bad certificate or key late and vaguely (a failed handshake on the first call,
on the other side); these checks fail at start-up with one line naming the file and what is
wrong with it (a `UsageError`: CLI exit 2).

Invariants:
- Secrets (private keys, tokens) come from files, never from argv or the environment, and no
  message quotes a byte of a file: it names the file and, for a token file, the line.
- A private key is unencrypted (grpc takes no passphrase; protect it by file mode instead)
  and belongs to its certificate; a CA file holds at least one certificate.
- The token syntax (`TOKEN_RE`, at least `MIN_TOKEN_CHARS`) is RFC 6750's b64token, the same
  on both sides: a token the client can send is a token the server can list.
- No grpc here (the store may read its Redis TLS files with it too).
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from serving.errors import UsageError

TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/-]+=*")
# Shorter is guessable. Make one: python -c "import secrets; print(secrets.token_urlsafe(32))"
MIN_TOKEN_CHARS = 16
CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of one end of a TLS connection.

    `cert` and `key`: this end's certificate (chain) and its private key; both or neither.
    `ca`: the certificate authority the *other* end's certificate must chain to. On a server
    it turns on mutual TLS (clients must present a certificate it signed); on a client it
    verifies the server (None: the system's roots).
    """

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None


@dataclass(frozen=True)
class TLSBytes:
    """`TLSFiles` read and checked: what grpc's credential constructors take."""

    cert: bytes | None
    key: bytes | None = field(repr=False)  # a secret: never in a repr or a log line
    ca: bytes | None


def load_tls(files: TLSFiles) -> TLSBytes:
    """Read and check `files`; UsageError naming the file and the problem."""
    if (files.cert is None) != (files.key is None):
        raise UsageError(
            "a TLS certificate needs its private key: give both --tls-cert and --tls-key"
        )
    cert = key = ca = None
    if files.cert is not None and files.key is not None:
        cert = _read(files.cert, "TLS certificate")
        if CERTIFICATE not in cert:
            raise UsageError(f"TLS certificate {files.cert}: no PEM certificate in it")
        key = _read(files.key, "TLS private key")
        if not PRIVATE_KEY.search(key):
            raise UsageError(f"TLS private key {files.key}: no PEM private key in it")
        if b"ENCRYPTED" in key:
            raise UsageError(
                f"TLS private key {files.key} is encrypted: grpc takes no passphrase; "
                "give the key unencrypted and readable by this user only (chmod 600)"
            )
        _check_pair(files.cert, files.key)
    if files.ca is not None:
        ca = _read(files.ca, "TLS CA certificate")
        if CERTIFICATE not in ca:
            raise UsageError(f"TLS CA certificate {files.ca}: no PEM certificate in it")
        try:
            ssl.create_default_context(cafile=str(files.ca))
        except ssl.SSLError as exc:
            raise UsageError(
                f"TLS CA certificate {files.ca}: unreadable certificate ({exc.reason})"
            ) from None
    return TLSBytes(cert, key, ca)


def read_token(path: Path) -> str:
    """The bearer token in a client's token file: the first word of its first line that is
    neither blank nor a `#` comment (so a line of a server's tokens file works as well)."""
    text = _read(path, "token file").decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        words = line.partition("#")[0].split()
        if words:
            check_token(words[0], f"token file {path} line {number}")
            return words[0]
    raise UsageError(f"token file {path} holds no token")


def check_token(token: str, where: str) -> None:
    """UsageError at `where` unless `token` has the bearer-token syntax (never quoting it)."""
    if not TOKEN_RE.fullmatch(token):
        raise UsageError(f"{where}: not a bearer token (letters, digits and -._~+/, then any '=')")
    if len(token) < MIN_TOKEN_CHARS:
        raise UsageError(f"{where}: a token of fewer than {MIN_TOKEN_CHARS} characters")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot read it ({exc.strerror})") from None


def _check_pair(cert: Path, key: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise UsageError(
                f"TLS private key {key} does not belong to the certificate {cert}"
            ) from None
        raise UsageError(
            f"TLS certificate {cert} and key {key}: cannot load them ({exc.reason})"
        ) from None
