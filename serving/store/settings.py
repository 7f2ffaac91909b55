"""Which Redis: `RedisSettings` for a feature repository (single, cluster or sentinel; TLS, ACL).

Precedence: `--redis-url` > `CARRARA_REDIS_URL` > the repo's `feature_store.yaml` (Feast's own
`online_store` settings: `redis_type` redis | redis_cluster | redis_sentinel, `sentinel_master`,
and `connection_string`, "host:port[,host:port...],db=0,password=...,ssl=true,..." whose
options are redis-py connection arguments, as Feast passes them) > localhost:6379. A URL
(redis:// or rediss://) names one server.

Secrets: the password may come from the URL or the yaml (as in Feast), or from the environment
(`CARRARA_REDIS_PASSWORD`, `CARRARA_REDIS_PASSWORD_FILE`, and `CARRARA_REDIS_USERNAME` for an
ACL user), which beats both; the command line refuses a URL with a password in it (argv shows
in `ps`). No log line or error message carries a secret: `describe()` and `redacted_url` are
what may be shown. The server's other settings (ports, threads, limits) are `ServerSettings` in
serving/online/server.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from serving.errors import UsageError
from serving.repo.plan import RepoFiles

ENV_REDIS_URL = "CARRARA_REDIS_URL"
ENV_PASSWORD = "CARRARA_REDIS_PASSWORD"
ENV_PASSWORD_FILE = "CARRARA_REDIS_PASSWORD_FILE"
ENV_USERNAME = "CARRARA_REDIS_USERNAME"
TOPOLOGIES = {"redis": "single", "redis_cluster": "cluster", "redis_sentinel": "sentinel"}
SECRET_OPTIONS = frozenset({"password", "sentinel_password"})
# connection_string options that are no redis-py connection arguments of ours
_IGNORED_OPTIONS = frozenset({"skip_full_coverage_check"})


@dataclass(frozen=True)
class RedisSettings:
    url: str  # single: the server; cluster and sentinel: the first node, for messages
    key_ttl_s: int | None = None  # Feast's online_store.key_ttl_seconds
    topology: str = "single"  # single | cluster | sentinel
    nodes: tuple[tuple[str, int], ...] = ()  # cluster start-up nodes, or the sentinels
    sentinel_master: str = "mymaster"
    options: Mapping[str, Any] = field(default_factory=dict)  # redis-py arguments, no secrets
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def cluster(self) -> bool:
        return self.topology == "cluster"

    @property
    def redacted_url(self) -> str:
        return redact(self.url)  # the URL holds no credentials; redacted all the same

    def describe(self) -> str:
        """Where and how, never a secret: for logs and error messages."""
        if self.topology == "single":
            return f"Redis at {self.redacted_url}"
        nodes = ",".join(f"{h}:{p}" for h, p in self.nodes)
        what = (
            f"sentinel master {self.sentinel_master!r} via"
            if self.topology == "sentinel"
            else "cluster"
        )
        return f"Redis {what} {nodes}" + (" (TLS)" if self.options.get("ssl") else "")

    def connection_kwargs(self) -> dict[str, Any]:
        """redis-py connection arguments: the options plus the credentials."""
        kwargs = dict(self.options)
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        return kwargs


def redis_settings(repo: Path, override_url: str | None = None) -> RedisSettings:
    """Redis settings for `repo`; `override_url` (a flag) beats the environment and the yaml."""
    files = RepoFiles.locate(repo)
    store = files.online_store
    url = override_url or os.environ.get(ENV_REDIS_URL)
    if store.get("type", "sqlite") != "redis" and not url:
        raise UsageError(
            f"{files.repo / 'feature_store.yaml'}: online_store type is {store.get('type')!r}; "
            "Carrara serves Redis online stores only (or pass --redis-url)"
        )
    ttl = store.get("key_ttl_seconds")
    key_ttl_s = int(ttl) if ttl else None
    if url:
        settings = url_settings(url, key_ttl_s)
    else:
        settings = feast_settings(
            str(store.get("connection_string", "localhost:6379")),
            str(store.get("redis_type", "redis")),
            str(store.get("sentinel_master", "mymaster")),
            key_ttl_s,
        )
    return with_secrets_from_env(settings)


def url_settings(url: str, key_ttl_s: int | None = None) -> RedisSettings:
    """One server from a URL; its credentials move out of the URL into the settings."""
    validate_url(url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return RedisSettings(
        url=urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")),
        key_ttl_s=key_ttl_s,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def feast_settings(
    connection_string: str,
    redis_type: str = "redis",
    sentinel_master: str = "mymaster",
    key_ttl_s: int | None = None,
) -> RedisSettings:
    """Feast's online store settings, read as Feast reads them (`_parse_connection_string`)."""
    if redis_type not in TOPOLOGIES:
        raise UsageError(
            f"online_store.redis_type {redis_type!r} is none of {', '.join(sorted(TOPOLOGIES))}"
        )
    nodes, options = parse_connection_string(connection_string)
    topology = TOPOLOGIES[redis_type]
    password = options.pop("password", None)
    username = options.pop("username", None)
    db = options.pop("db", 0) if topology != "sentinel" else options.get("db", 0)
    if topology == "cluster" and int(db or 0) != 0:
        raise UsageError("online_store.connection_string: a Redis Cluster has only db 0")
    host, port = nodes[0]
    scheme = "rediss" if options.get("ssl") else "redis"
    return RedisSettings(
        url=f"{scheme}://{host}:{port}/{db}",
        key_ttl_s=key_ttl_s,
        topology=topology,
        nodes=tuple(nodes),
        sentinel_master=sentinel_master,
        options={k: v for k, v in options.items() if k not in _IGNORED_OPTIONS},
        username=None if username is None else str(username),
        password=None if password is None else str(password),
    )


def parse_connection_string(text: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """Feast's format: `host:port` items and `key=value` options (values JSON when they parse)."""
    nodes: list[tuple[str, int]] = []
    options: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "=" in item:
            key, value = item.split("=", 1)
            try:
                options[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                options[key.strip()] = value
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"online_store.connection_string: {item!r} is not host:port")
        nodes.append((host, int(port)))
    if not nodes:
        raise UsageError("online_store.connection_string names no host:port")
    return nodes, options


def with_secrets_from_env(settings: RedisSettings) -> RedisSettings:
    """The environment's credentials, when set, replace those of the URL or the yaml."""
    password = os.environ.get(ENV_PASSWORD)
    path = os.environ.get(ENV_PASSWORD_FILE)
    if path:
        try:
            password = Path(path).read_text().strip()
        except OSError as exc:
            raise UsageError(f"{ENV_PASSWORD_FILE}: cannot read {path}: {exc.strerror}") from exc
    username = os.environ.get(ENV_USERNAME)
    return replace(
        settings,
        password=password if password is not None else settings.password,
        username=username if username is not None else settings.username,
    )


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


def url_has_password(url: str) -> bool:
    """Whether a URL carries a password (a malformed one is validate_url's to refuse)."""
    try:
        return urlsplit(url).password is not None
    except ValueError:
        return False


def redact(url: str) -> str:
    """The URL with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}{port}", parts.path, parts.query, ""))
