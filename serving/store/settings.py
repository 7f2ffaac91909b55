"""Which Redis: `RedisSettings` (URL, key ttl, cluster flag) for a feature repository.

Precedence: `--redis-url` > `CARRARA_REDIS_URL` > the repo's `feature_store.yaml` (Feast's own
`online_store.connection_string`, "host:port,db=0,password=...,ssl=true", converted to a
standard `redis://` / `rediss://` URL; its first host only) > localhost:6379. The URL is
validated here, before any connection. Secrets never reach a log line or an error message: use
`redacted_url`. The server's other settings (ports, threads, limits) are `ServerSettings` in
serving/online/server.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from serving.errors import UsageError
from serving.repo.plan import RepoFiles

ENV_REDIS_URL = "CARRARA_REDIS_URL"


@dataclass(frozen=True)
class RedisSettings:
    url: str
    key_ttl_s: int | None = None  # Feast's online_store.key_ttl_seconds
    cluster: bool = False  # Feast's redis_type: redis_cluster

    @property
    def redacted_url(self) -> str:
        return redact(self.url)


def redis_settings(repo: Path, override_url: str | None = None) -> RedisSettings:
    """Redis settings for `repo`; `override_url` (a flag) beats the environment and the yaml."""
    files = RepoFiles.locate(repo)
    store = files.online_store
    if store.get("type", "sqlite") != "redis" and not (
        override_url or os.environ.get(ENV_REDIS_URL)
    ):
        raise UsageError(
            f"{files.repo / 'feature_store.yaml'}: online_store type is {store.get('type')!r}; "
            "Carrara serves Redis online stores only (or pass --redis-url)"
        )
    url = (
        override_url
        or os.environ.get(ENV_REDIS_URL)
        or feast_connection_url(str(store.get("connection_string", "localhost:6379")))
    )
    validate_url(url)
    ttl = store.get("key_ttl_seconds")
    return RedisSettings(
        url=url,
        key_ttl_s=int(ttl) if ttl else None,
        cluster=store.get("redis_type") == "redis_cluster",
    )


def feast_connection_url(connection_string: str) -> str:
    """Feast's "host:port,db=1,password=p,ssl=true" as a redis URL (first host only)."""
    parts = [p.strip() for p in connection_string.split(",") if p.strip()]
    if not parts:
        raise UsageError("online_store.connection_string is empty")
    hostport, options = parts[0], dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    scheme = "rediss" if options.get("ssl", "").lower() == "true" else "redis"
    password = options.get("password")
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"{scheme}://{auth}{hostport}/{options.get('db', '0')}"


def validate_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise UsageError(f"not a redis URL: {redact(url)} (expected redis:// or rediss://)")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise UsageError(f"bad port in redis URL {redact(url)}") from exc
    if parts.scheme != "unix" and not parts.hostname:
        raise UsageError(f"no host in redis URL {redact(url)}")


def redact(url: str) -> str:
    """The URL with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}{port}", parts.path, parts.query, ""))
