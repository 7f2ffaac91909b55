"""Settings: Feast's connection string as a URL, overrides, and secrets kept out of text."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import UsageError
from serving.store.settings import ENV_REDIS_URL, feast_settings, redact, redis_settings


@pytest.mark.parametrize(
    ("connection_string", "url", "username", "password"),
    [
        ("localhost:6379", "redis://localhost:6379/0", None, None),
        ("127.0.0.1:7000,db=3", "redis://127.0.0.1:7000/3", None, None),
        (
            "redis.internal:6380,ssl=true,password=p@ss/w,username=app",
            "rediss://redis.internal:6380/0",
            "app",
            "p@ss/w",
        ),
        ("h1:1,h2:2", "redis://h1:1/0", None, None),
    ],
)
def test_feast_connection_string_is_read_as_feast_reads_it(
    connection_string: str, url: str, username: str | None, password: str | None
) -> None:
    settings = feast_settings(connection_string)
    assert (settings.url, settings.username, settings.password) == (url, username, password)
    assert password is None or password not in repr(settings)
    assert password is None or password not in settings.describe()


def test_cluster_and_sentinel_settings_keep_every_node() -> None:
    cluster = feast_settings("a:1,b:2,c:3,ssl=true,password=x", "redis_cluster")
    assert cluster.topology == "cluster"
    assert cluster.nodes == (("a", 1), ("b", 2), ("c", 3))
    assert cluster.options == {"ssl": True}
    assert cluster.connection_kwargs() == {"ssl": True, "password": "x"}
    sentinel = feast_settings("s1:26379,s2:26379", "redis_sentinel", "primary")
    assert (sentinel.topology, sentinel.sentinel_master) == ("sentinel", "primary")
    with pytest.raises(UsageError, match="redis_type 'redis_ring'"):
        feast_settings("a:1", "redis_ring")
    with pytest.raises(UsageError, match="'a' is not host:port"):
        feast_settings("a", "redis_cluster")


def test_secrets_from_the_environment_beat_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = write_repo(tmp_path, "  type: redis\n  connection_string: h:1,password=yaml\n")
    assert redis_settings(repo).password == "yaml"
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    monkeypatch.setenv("CARRARA_REDIS_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("CARRARA_REDIS_USERNAME", "acl-user")
    settings = redis_settings(repo, "redis://:url@h:2/0")
    assert (settings.username, settings.password, settings.url) == (
        "acl-user",
        "from-file",
        "redis://h:2/0",
    )


def test_redact_hides_the_password_only() -> None:
    assert redact("rediss://user:secret@host:6380/1") == "rediss://user:***@host:6380/1"
    assert redact("redis://host:6379/0") == "redis://host:6379/0"


def write_repo(tmp_path: Path, online_store: str) -> Path:
    (tmp_path / "feature_store.yaml").write_text(
        f"project: p\nregistry: data/registry.db\nonline_store:\n{online_store}"
    )
    return tmp_path


def test_settings_follow_yaml_then_env_then_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = write_repo(
        tmp_path, "  type: redis\n  connection_string: 127.0.0.1:7001\n  key_ttl_seconds: 60\n"
    )
    monkeypatch.delenv(ENV_REDIS_URL, raising=False)
    assert redis_settings(repo).url == "redis://127.0.0.1:7001/0"
    assert redis_settings(repo).key_ttl_s == 60
    monkeypatch.setenv(ENV_REDIS_URL, "redis://127.0.0.1:7002/1")
    assert redis_settings(repo).url == "redis://127.0.0.1:7002/1"
    assert redis_settings(repo, "redis://127.0.0.1:7003/2").url == "redis://127.0.0.1:7003/2"


def test_bad_url_is_refused_without_leaking_the_password(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, "  type: redis\n")
    with pytest.raises(UsageError) as info:
        redis_settings(repo, "http://user:secret@host:1")
    assert "secret" not in str(info.value)
    assert "***" in str(info.value)


def test_non_redis_online_store_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_REDIS_URL, raising=False)
    repo = write_repo(tmp_path, "  type: sqlite\n")
    with pytest.raises(UsageError, match="Redis online stores only"):
        redis_settings(repo)
