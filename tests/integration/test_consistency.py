"""`carrara check-consistency` against a real server, Redis and offline store.

After `carrara materialize` of the test world the server's vectors and predictions must
equal the offline point-in-time ones exactly; a feature row written late to the offline
store (after the materialization, so Redis never got it) must be reported, row by row.
"""

from __future__ import annotations

import shutil
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from serving.cli import main
from serving.client import python_values
from serving.online.server import Server
from tests.helpers import WORLD_END

# `server` (conftest) serves the materialized test world; its rows were all created before
# the session began (tests/helpers.py: WORLD_END), so the offline side sees them too.
# check-consistency's RPCs carry its 10 s deadline; the timeout bounds the rest (as in
# test_server.py).
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

LATE_DRIVER = 7
LATE_VALUES: dict[str, object] = {  # each unlike any value the sample world draws
    "acceptance_rate": 0.125,
    "cancel_rate": 0.5,
    "avg_rating": 1.25,
    "trips_today": 999,
    "online_minutes_today": 998,
    "avg_speed_kph_7d": 99.5,
    "vehicle_type": None,  # set to a type other than the driver's own
}


def check(repo: Path, registry: Path, server: Server, *extra: str) -> int:
    return main(
        [
            "check-consistency",
            *("--target", f"127.0.0.1:{server.port}", "--repo", str(repo)),
            *("--registry", str(registry), *extra),
        ]
    )


@pytest.mark.parametrize("model", ["eta", "pricing"])
def test_server_and_offline_agree_exactly_after_materialize(
    model: str,
    server: Server,
    applied_repo: Path,
    served_registry: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = check(applied_repo, served_registry, server, "--model", model, "--sample", "300")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "300 rows sampled" in out
    assert "online and offline agree exactly" in out


def plant_late_row(repo: Path) -> None:
    """Append a driver_stats row stamped inside the materialized window, written to the
    offline store after the materialization (a late write): the offline store has it now,
    Redis never got it. Created at the world's end: in the past, so visible offline."""
    path = repo / "data" / "driver_stats.parquet"
    table = pq.read_table(path)
    event = WORLD_END - timedelta(minutes=30)  # newer than the driver's last snapshot (-1 h)
    created = WORLD_END
    own = table.filter(pc.equal(table["driver_id"], LATE_DRIVER))["vehicle_type"][0].as_py()
    row = {
        "driver_id": [LATE_DRIVER],
        "event_timestamp": [event],
        "created": [created],
        **{name: [value] for name, value in LATE_VALUES.items()},
        "vehicle_type": ["xl" if own != "xl" else "comfort"],
    }
    late = pa.table({f.name: pa.array(row[f.name], f.type) for f in table.schema})
    pq.write_table(pa.concat_tables([table, late]), path)


def test_a_feature_written_late_is_reported_per_row_and_feature(
    server: Server,
    applied_repo: Path,
    served_registry: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    skewed = tmp_path / "feature_repo"
    shutil.copytree(applied_repo, skewed)  # the server keeps serving the original's Redis
    plant_late_row(skewed)
    trips = pq.read_table(skewed / "data" / "trips.parquet").slice(0, 12).to_pandas()
    trips.loc[trips.driver_id == LATE_DRIVER, "driver_id"] = LATE_DRIVER + 1
    trips.loc[[2, 5, 9], "driver_id"] = LATE_DRIVER
    sample = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pandas(trips, preserve_index=False), sample)
    code = check(
        skewed,
        served_registry,
        server,
        *("--model", "eta", "--input", str(sample), "--sample", "12", "--batch-rows", "5"),
    )
    out = capsys.readouterr().out
    assert code == 1, out
    lines = [line for line in out.splitlines() if line.startswith("  row ")]
    found = {(int(line.split()[1]), line.split("): ")[1].split(":")[0]) for line in lines}
    features = {f"driver_stats__{name}" for name in LATE_VALUES}
    differing_features = {feature for _, feature in found} - {"prediction"}
    assert differing_features == features, out
    assert {row for row, _ in found} == {2, 5, 9}
    assert f"driver_id={LATE_DRIVER}" in lines[0]
    speed = next(line for line in lines if "driver_stats__avg_speed_kph_7d" in line)
    assert speed.endswith("offline 99.5"), speed  # the late value, as the offline store has it
    assert "rows sampled" in out
    assert "differences in 3 rows" in out
    assert np.isfinite(float(speed.split("online ")[1].split(",")[0]))


def test_windows_pushed_now_are_checked_and_a_missed_event_is_reported(
    server: Server,
    applied_repo: Path,
    served_registry: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Events pushed now reach the server's windows (Push) and a copy's offline events (the
    batch source): check-consistency compares pricing's windowed features and agrees; one
    more event pushed online only is reported for its zone's windows."""
    from serving.client import PredictionClient
    from serving.ingest.push import Pusher, PushTarget
    from serving.repo.compile import ensure_plan

    copy = tmp_path / "feature_repo"
    shutil.copytree(applied_repo, copy)
    now_us = int(time.time() * 1e6)
    zones = [3, 5, 9]
    events = {
        "zone_id": [z for z in zones for _ in range(4)],
        "trip_requested": [1, 1, 1, 0] * 3,
        "driver_available": [0, 0, 1, 1] * 3,
        "event_timestamp": [now_us - 1_000_000 * (i + 1) for i in range(12)],
    }
    offline = Pusher(ensure_plan(copy), copy, None)
    offline.push("zone_events", events, to=PushTarget.OFFLINE)
    with PredictionClient(f"127.0.0.1:{server.port}", timeout_s=10) as client:
        assert client.push("zone_events", events).rows_written == 12
        online = client.online_features(
            {"zone_id": zones}, features=["zone_activity:sum_trip_requested_60s"]
        )
    assert [v for c in online.features for v in python_values(c)] == [3, 3, 3]
    rows = pq.read_table(copy / "data" / "surge_observations.parquet").slice(0, 6)
    rows = rows.set_column(
        rows.schema.get_field_index("zone_id"), "zone_id", pa.array(zones * 2, pa.int64())
    )
    sample = tmp_path / "rows.parquet"
    pq.write_table(rows, sample)
    args = ("--model", "pricing", "--input", str(sample), "--sample", "6")
    assert check(copy, served_registry, server, *args) == 0, capsys.readouterr().out
    with PredictionClient(f"127.0.0.1:{server.port}", timeout_s=10) as client:
        one_more = {k: v[:1] for k, v in events.items()} | {"zone_id": [5]}
        client.push("zone_events", one_more)  # online only: the offline copy never sees it
    capsys.readouterr()
    assert check(copy, served_registry, server, *args) == 1
    out = capsys.readouterr().out
    reported = {
        line.split("): ")[1].split(":")[0] for line in out.splitlines() if "zone_id=5" in line
    }
    assert "zone_activity__sum_trip_requested_60s" in reported, out
    assert not [line for line in out.splitlines() if "zone_id=3" in line or "zone_id=9" in line]
