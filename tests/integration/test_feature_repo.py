"""The feature repo applies with Feast; its serving plan round-trips and detects staleness."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.errors import PlanError
from serving.repo.compile import compile_plan, ensure_plan, feast_context
from serving.repo.plan import RepoFiles, load_plan, plan_from_dict, save_plan

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_plan_round_trips_through_its_file(applied_repo: Path, tmp_path: Path) -> None:
    plan = load_plan(RepoFiles.locate(applied_repo))
    copy = save_plan(plan, tmp_path / "plan.json")
    import json

    assert plan_from_dict(json.loads((tmp_path / "plan.json").read_text())) == replace(
        copy, path=None
    )


def test_plan_describes_the_ride_hailing_repo(applied_repo: Path) -> None:
    plan = load_plan(RepoFiles.locate(applied_repo))
    route = plan.feature_view("route_stats")
    assert [(c.name, c.dtype) for c in route.join_keys] == [
        ("pickup_zone_id", "Int64"),
        ("dropoff_zone_id", "Int64"),
    ]
    assert route.ttl_s == 3 * 86_400
    driver = plan.feature_view("driver_stats")
    assert driver.feature("acceptance_rate").dtype == "Float32"
    assert driver.feature("vehicle_type").dtype == "String"
    eta = plan.feature_service("eta_v1")
    pickup = next(p for p in eta.projections if p.name == "pickup_zone")
    assert (pickup.view, pickup.join_key_map) == ("zone_stats", {"zone_id": "pickup_zone_id"})
    geometry = plan.on_demand_views["trip_geometry"]
    assert (geometry.module, geometry.function) == ("transforms", "trip_geometry")
    assert [c.name for c in geometry.request_fields] == [
        "pickup_lat",
        "pickup_lon",
        "dropoff_lat",
        "dropoff_lon",
    ]


def test_changed_registry_makes_the_plan_stale(applied_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(applied_repo, repo)
    files = RepoFiles.locate(repo)
    load_plan(files)
    touch_registry(files)  # as another `feast apply` would
    with pytest.raises(PlanError, match="stale"):
        load_plan(files)
    assert ensure_plan(repo).registry_fingerprint == files.registry_fingerprint()
    load_plan(files)  # compiled again, current


def touch_registry(files: RepoFiles) -> None:
    from feast.protos.feast.core.Registry_pb2 import Registry

    registry = Registry.FromString(files.registry.read_bytes())
    registry.version_id = "changed-by-the-test"
    files.registry.write_bytes(registry.SerializeToString())


def test_missing_plan_names_the_command_to_run(applied_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(applied_repo, repo)
    files = RepoFiles.locate(repo)
    files.plan.unlink()
    with pytest.raises(PlanError, match="carrara apply"):
        load_plan(files)
    assert compile_plan(files).feature_services.keys() == {"eta_v1", "pricing_v1", "pricing_v2"}


def test_feast_historical_retrieval_runs_the_repo_transforms(applied_repo: Path) -> None:
    trips = pd.read_parquet(applied_repo / "data" / "trips.parquet").head(200)
    with feast_context(applied_repo):
        from feast import FeatureStore

        store = FeatureStore(repo_path=str(applied_repo))
        features = store.get_historical_features(
            entity_df=trips,
            features=store.get_feature_service("eta_v1"),
            full_feature_names=True,
        ).to_df()
        import transforms  # type: ignore[import-not-found]  # the repo's, on sys.path here

    features = features.sort_values("trip_id").reset_index(drop=True)
    expected = transforms.trip_geometry(features)["haversine_km"]
    np.testing.assert_allclose(features["trip_geometry__haversine_km"], expected)
    clock = transforms.request_time(features)
    np.testing.assert_array_equal(features["request_time__hour_of_day"], clock["hour_of_day"])
    hours = pd.to_datetime(features["request_ts_s"], unit="s").dt.hour
    np.testing.assert_array_equal(features["request_time__hour_of_day"], hours)
    assert features["pickup_zone__traffic_index"].notna().all()


def test_feast_plan_succeeds_on_the_repo(applied_repo: Path) -> None:
    feast = Path(sys.executable).with_name("feast")
    result = subprocess.run(
        [str(feast), "plan"],
        cwd=applied_repo,
        capture_output=True,
        text=True,
        timeout=120,  # inside the test timeout: an overrun fails here, clearly
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
