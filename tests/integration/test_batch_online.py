"""`carrara score --online`: the live view, through the server's own read path and scorer.

After `carrara materialize`, scoring as of now from Redis and scoring point in time from the
offline store with every row stamped "now" must give the same predictions and missing
counts: the consistency property, in batch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.cli import main
from tests.helpers import materialize_world

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_online_scores_equal_point_in_time_scores_as_of_now(
    applied_repo: Path,
    trained_registry: Path,
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    materialize_world(applied_repo, redis_url)  # every row created already (WORLD_END)
    trips = pq.read_table(applied_repo / "data" / "trips.parquet").slice(0, 1_500)
    unknown = pa.array(np.where(np.arange(1_500) % 50 == 0, 10**12, trips["driver_id"]))
    trips = trips.set_column(trips.schema.get_field_index("driver_id"), "driver_id", unknown)
    # Stamped now: the latest rows' ttl boundaries are over half an hour away (helpers.py:
    # world_end), so the seconds between the two runs cannot change which rows count.
    now = pa.array([datetime.now(UTC)] * trips.num_rows, pa.timestamp("us", tz="UTC"))
    trips = trips.set_column(
        trips.schema.get_field_index("event_timestamp"), "event_timestamp", now
    )
    source = tmp_path / "requests.parquet"
    pq.write_table(trips, source)
    common = [
        *("--model", "eta", "--input", str(source)),
        *("--repo", str(applied_repo), "--registry", str(trained_registry)),
        *("--chunk-rows", "400"),
    ]
    online_out, offline_out = tmp_path / "online.parquet", tmp_path / "offline.parquet"
    assert (
        main(["score", *common, "--output", str(online_out), "--online", "--redis-url", redis_url])
        == 0
    )
    assert "online, as of now" in capsys.readouterr().out
    assert main(["score", *common, "--output", str(offline_out)]) == 0
    online, offline = pq.read_table(online_out), pq.read_table(offline_out)
    assert online.num_rows == offline.num_rows == 1_500
    np.testing.assert_array_equal(online["prediction"], offline["prediction"])
    np.testing.assert_array_equal(online["missing_features"], offline["missing_features"])
    assert set(online["missing_features"].to_pylist()) >= {0, 7}  # the unknown drivers


def test_online_scoring_names_an_unreachable_redis(
    applied_repo: Path, trained_registry: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "requests.parquet"
    pq.write_table(pq.read_table(applied_repo / "data" / "trips.parquet").slice(0, 10), source)
    output = tmp_path / "out.parquet"
    code = main(
        [
            "score",
            *("--model", "eta", "--input", str(source), "--output", str(output), "--online"),
            *("--repo", str(applied_repo), "--registry", str(trained_registry)),
            *("--redis-url", "redis://127.0.0.1:1/0"),
        ]
    )
    assert code == 1
    assert "redis://127.0.0.1:1/0" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["requests.parquet"]
