"""The bearer tokens a server accepts: its tokens file, parsed, looked up in constant time,
re-read when it changes.

The file (DESIGN.md section 5): one token per line, optionally followed by whitespace and a
comma-separated list of what it may call: model names, `push` (the Push RPC) and `features`
(GetOnlineFeatures). A token alone may call everything; `#` starts a comment.

    # ops: everything
    Vq3k...token-1
    Zx8p...token-2   eta, pricing        # the apps: two models, no raw features
    Lm4r...token-3   pricing,features

Invariants:
- No token is kept in clear, logged or put in a message: the table holds SHA-256 digests, and
  messages name the file and the line only. Not even a name from a list is quoted: a token
  pasted into one by mistake must not reach the log either.
- A lookup compares the presented token's digest with every entry (`hmac.compare_digest`),
  never stopping early: its time does not depend on which token matched, or how much of one.
- A file that cannot be read or parsed is a UsageError at start-up. Later, a change that
  cannot be read or parsed is logged and refused: the last good table stays in force. A valid
  file without tokens is taken (it revokes every token) with a warning.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from serving.credentials import check_token
from serving.errors import UsageError
from serving.models.registry import NAME_RE

log = logging.getLogger(__name__)

PUSH = "push"  # grants the Push RPC
FEATURES = "features"  # grants GetOnlineFeatures


@dataclass(frozen=True)
class Grant:
    """What a caller may call: `names` (models, `push`, `features`), or everything if None."""

    names: frozenset[str] | None

    def allows(self, name: str) -> bool:
        return self.names is None or name in self.names


EVERYTHING = Grant(None)


@dataclass(frozen=True)
class TokenEntry:
    digest: bytes  # SHA-256 of the token
    grant: Grant
    line: int


def parse_tokens(text: str, source: str) -> tuple[TokenEntry, ...]:
    """The entries of a tokens file's `text`; UsageError naming `source` and the line."""
    entries: list[TokenEntry] = []
    seen: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        where = f"{source} line {number}"
        token, *rest = line.split(maxsplit=1)
        check_token(token, where)
        digest = _digest(token)
        if digest in seen:
            raise UsageError(f"{where} repeats the token of line {seen[digest]}")
        seen[digest] = number
        entries.append(TokenEntry(digest, _grant(rest[0] if rest else "", where), number))
    return tuple(entries)


def _grant(text: str, where: str) -> Grant:
    if not text:
        return EVERYTHING
    names = [name.strip() for name in text.split(",")]
    for position, name in enumerate(names, 1):
        if not NAME_RE.fullmatch(name):
            raise UsageError(
                f"{where}: name {position} of its list is no model name, `push` or `features` "
                "(lowercase letters, digits, _ and -; names separated by commas)"
            )
    return Grant(frozenset(names))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """The tokens of one file; `reload` re-reads it (the server's watcher calls it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._text = self._read()
        self._entries = parse_tokens(self._text, f"tokens file {path}")
        if not self._entries:
            raise UsageError(f"tokens file {path} holds no token: every call would be refused")
        self._refused: str | None = None  # the last refused change's error, logged once
        log.info("tokens file %s: %s", path, self.describe())

    def grant(self, token: str) -> Grant | None:
        """What `token` may call, or None if it is no token of the file. Constant time in
        the token's content: every entry is compared, by digest."""
        digest = _digest(token)
        found: Grant | None = None
        for entry in self._entries:  # one read of the attribute: a reload swaps it whole
            if hmac.compare_digest(entry.digest, digest):
                found = entry.grant
        return found

    def reload(self) -> bool:
        """Re-read the file; take it if it changed and parses. Whether the table changed."""
        with self._lock:  # the watcher and an explicit call must not interleave
            try:
                text = self._read()
                if text == self._text:
                    return False
                entries = parse_tokens(text, f"tokens file {self.path}")
            except UsageError as exc:
                if str(exc) != self._refused:
                    log.error("%s; the tokens loaded before stay in force", exc)
                    self._refused = str(exc)
                return False
            self._text, self._entries, self._refused = text, entries, None
        if entries:
            log.warning("tokens file %s changed: %s", self.path, self.describe())
        else:
            log.warning(
                "tokens file %s holds no token now: every call but health is refused", self.path
            )
        return True

    def describe(self) -> str:
        entries = self._entries
        limited = sum(1 for e in entries if e.grant.names is not None)
        return f"{len(entries)} tokens ({limited} limited to some models)"

    def unknown_names(self, known: set[str]) -> list[int]:
        """Lines whose list names something other than `known`, `push` or `features`."""
        allowed = known | {PUSH, FEATURES}
        return [
            e.line for e in self._entries if e.grant.names is not None and e.grant.names - allowed
        ]

    def _read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"tokens file {self.path}: no such file") from None
        except UnicodeDecodeError:
            raise UsageError(f"tokens file {self.path}: not UTF-8 text") from None
        except OSError as exc:
            raise UsageError(f"tokens file {self.path}: cannot read it ({exc.strerror})") from None
