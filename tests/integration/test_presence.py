"""An empty online store is said out loud: at server start-up and by `materialize --incremental`."""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from serving.batch.materialize import materialize
from serving.online.server import Server, ServerSettings
from serving.repo.plan import RepoFiles, load_plan
from serving.store.online_store import OnlineStore
from serving.store.presence import absent_views
from serving.store.settings import redis_settings
from tests.helpers import WORLD_END

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def repo(applied_repo: Path, tmp_path: Path) -> Path:
    """A private copy: materialize records its intervals in the repo's Feast registry."""
    return Path(shutil.copytree(applied_repo, tmp_path / "feature_repo"))


def test_absent_views_names_exactly_the_views_without_keys(repo: Path, redis_url: str) -> None:
    plan = load_plan(RepoFiles.locate(repo))
    views = list(plan.feature_views.values())
    store = OnlineStore(redis_settings(repo, redis_url), plan.project)
    try:
        assert {a.view for a in absent_views(store, views)} == {v.name for v in views}
        assert all(a.whole_keyspace for a in absent_views(store, views))
        materialize(
            repo,
            start=WORLD_END - timedelta(days=3),
            end=WORLD_END,
            views=["driver_stats"],
            redis_url=redis_url,
        )
        absent = {a.view for a in absent_views(store, views)}
        assert absent == {v.name for v in views} - {"driver_stats"}
    finally:
        store.close()


def test_incremental_run_over_an_empty_redis_says_so(repo: Path, redis_url: str) -> None:
    first = materialize(
        repo, start=WORLD_END - timedelta(days=3), end=WORLD_END, redis_url=redis_url
    )
    assert first.written > 0
    assert not first.absent
    redis.Redis.from_url(redis_url).flushall()  # a new, empty Redis behind the same repo
    again = materialize(repo, incremental=True, end=WORLD_END, redis_url=redis_url)
    assert again.written == 0
    assert {a.view for a in again.absent} == {r.view for r in first.views}


def test_server_start_warns_per_served_view_missing_from_redis(
    applied_repo: Path,
    trained_registry: Path,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = ServerSettings(
        repo=applied_repo, registry=trained_registry, port=0, redis_url=redis_url
    )
    server = Server(settings)
    with caplog.at_level(logging.WARNING, logger="serving.online.server"):
        server.start()
    server.stop()
    warned = {
        r.getMessage().split("'")[1] for r in caplog.records if "no key holds it" in r.getMessage()
    }
    assert warned == {"driver_stats", "zone_stats", "route_stats", "zone_activity"}
    windowed = [r.getMessage() for r in caplog.records if "'zone_activity'" in r.getMessage()]
    assert "until events are pushed to it" in windowed[0]  # not materialize: it skips them
