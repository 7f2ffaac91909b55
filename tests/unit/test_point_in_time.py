"""Point-in-time correctness of training sets, on a tiny hand-made Feast repo in tmp.

A label at time t may see, per view, only the latest row with event_timestamp <= t, not older
than the view's ttl, and already created at t. Each hand-made label below sits where a leak
would change the answer; a randomised set is checked against a brute-force as-of join.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.errors import DataError, PlanError
from serving.repo.compile import apply_repo
from serving.repo.historical import _rounds
from serving.repo.plan import Column, ServingPlan
from serving.training.training_set import TrainingSet, build_training_set

pytestmark = pytest.mark.slow

DAY = datetime(2026, 10, 1, tzinfo=UTC)
TTL = timedelta(hours=2)
NAN = float("nan")

DEFINITIONS = """
from datetime import timedelta
from typing import Any

from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64
from feast.value_type import ValueType

rider = Entity(name="rider", join_keys=["rider_id"], value_type=ValueType.INT64)
rider_stats = FeatureView(
    name="rider_stats",
    entities=[rider],
    ttl=timedelta(hours=2),
    schema=[Field(name="rider_id", dtype=Int64), Field(name="speed", dtype=Float64)],
    source=FileSource(
        name="rider_stats_source",
        path="data/rider_stats.parquet",
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
    ),
)
trip = RequestSource(name="trip", schema=[Field(name="distance", dtype=Float64)])


@on_demand_feature_view(
    sources=[trip], schema=[Field(name="doubled", dtype=Float64)], mode="python"
)
def trip_math(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"doubled": [2.0 * d for d in inputs["distance"]]}


pit_v1 = FeatureService(name="pit_v1", features=[rider_stats, trip_math])
"""

CONFIG = """
project: pit
registry: data/registry.db
provider: local
online_store:
    type: sqlite
    path: data/online.db
offline_store:
    type: file
entity_key_serialization_version: 3
"""


def at(hours: float) -> datetime:
    return DAY + timedelta(hours=hours)


def hms(text: str) -> datetime:
    h, m, s = (int(part) for part in text.split(":"))
    return DAY + timedelta(hours=h, minutes=m, seconds=s)


# (rider, event time, created time, speed)
FEATURE_ROWS = [
    (1, "10:00:00", "10:00:30", 1.0),
    (1, "11:00:00", "11:00:30", 2.0),
    (1, "13:00:00", "13:00:30", 3.0),
    (2, "10:00:00", "10:00:30", 10.0),
    (3, "10:00:00", "10:00:30", 20.0),
    (3, "11:00:00", "12:30:00", 21.0),  # a late backfill: stamped 11:00, known from 12:30
]

# (rider, label time, distance, expected speed, why)
HAND_MADE = [
    (1, "09:59:59", 1.0, NAN, "no row yet"),
    (1, "10:30:00", 1.0, 1.0, "latest row"),
    (1, "10:59:59", 1.0, 1.0, "the 11:00 row is one second in the future"),
    (1, "11:00:10", 1.0, 1.0, "the 11:00 row exists but is created at 11:00:30"),
    (1, "11:00:30", 1.0, 2.0, "created exactly at t: known"),
    (1, "12:59:59", 1.0, 2.0, "the 13:00 row is in the future"),
    (1, "13:00:31", 1.0, 3.0, "latest row"),
    (2, "11:59:59", 1.0, 10.0, "within the 2 h ttl"),
    (2, "12:00:00", 1.0, 10.0, "exactly ttl old: still valid"),
    (2, "12:00:01", 1.0, NAN, "older than the ttl"),
    (3, "12:00:00", 1.0, 20.0, "the 11:00 row is backfilled at 12:30"),
    (3, "12:45:00", 1.0, 21.0, "the backfill is known now"),
    (3, "13:00:01", 1.0, NAN, "both rows older than the ttl"),
    (4, "12:00:00", 1.0, NAN, "unknown rider"),
    (1, "10:30:00", 7.0, 1.0, "same rider and time, other request data"),
    (1, "10:30:00", 7.0, 1.0, "an exact duplicate label row"),
    (1, "10:30:00", 3.0, 1.0, "a third label for that rider and time"),
]


def random_world(seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Feature rows and labels for 12 riders over 2 days; labels on a 10-minute grid so some
    share a rider and a time. Riders 100+ avoid the hand-made ones."""
    rng = np.random.default_rng(seed)
    rows = []
    for rider in range(100, 112):
        events = np.sort(rng.choice(2 * 86_400, size=15, replace=False))
        for event in events:
            created = int(event) + int(rng.integers(0, 3_600))
            rows.append(
                (
                    rider,
                    DAY + timedelta(seconds=int(event)),
                    DAY + timedelta(seconds=created),
                    float(rng.normal()),
                )
            )
    features = pd.DataFrame(rows, columns=["rider_id", "event_timestamp", "created", "speed"])
    labels = pd.DataFrame(
        {
            "rider_id": rng.integers(100, 112, 300),
            "event_timestamp": [
                DAY + timedelta(minutes=10 * int(m)) for m in rng.integers(0, 288, 300)
            ],
            "distance": rng.integers(0, 3, 300).astype(float),
        }
    )
    return features, labels


def as_of(features: pd.DataFrame, rider: int, t: datetime) -> float:
    """The brute-force oracle: latest row by event time among those valid at t."""
    valid = features[
        (features.rider_id == rider)
        & (features.event_timestamp <= t)
        & (features.event_timestamp >= t - TTL)
        & (features.created <= t)
    ]
    return NAN if valid.empty else float(valid.sort_values("event_timestamp").speed.iloc[-1])


def hand_made_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    features = pd.DataFrame(
        [(r, hms(e), hms(c), s) for r, e, c, s in FEATURE_ROWS],
        columns=["rider_id", "event_timestamp", "created", "speed"],
    )
    labels = pd.DataFrame(
        [(r, hms(t), d) for r, t, d, _, _ in HAND_MADE],
        columns=["rider_id", "event_timestamp", "distance"],
    )
    return features, labels


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ServingPlan]:
    repo = tmp_path_factory.mktemp("pit") / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "feature_store.yaml").write_text(CONFIG)
    (repo / "pit_definitions.py").write_text(DEFINITIONS)
    hand_features, hand_labels = hand_made_frames()
    random_features, random_labels = random_world(seed=11)
    features = pd.concat([hand_features, random_features], ignore_index=True)
    features.to_parquet(repo / "data" / "rider_stats.parquet")
    labels = pd.concat([hand_labels, random_labels], ignore_index=True)
    labels["y"] = np.arange(len(labels), dtype=float)  # the label: the row's original position
    labels.to_parquet(repo / "data" / "labels.parquet")
    return repo, apply_repo(repo)


@pytest.fixture(scope="module")
def training_set(tiny_repo: tuple[Path, ServingPlan]) -> TrainingSet:
    repo, plan = tiny_repo
    return build_training_set(
        repo, plan, "pit_v1", repo / "data" / "labels.parquet", "y", (None, None)
    )


def by_label(training_set: TrainingSet) -> pd.DataFrame:
    return training_set.frame.set_index("y").sort_index()


@pytest.mark.parametrize(("row", "case"), list(enumerate(HAND_MADE)), ids=[c[4] for c in HAND_MADE])
def test_hand_made_label_sees_only_what_was_known_at_its_time(
    training_set: TrainingSet, row: int, case: tuple[int, str, float, float, str]
) -> None:
    rider, t, distance, expected, _why = case
    got = by_label(training_set).loc[float(row)]
    assert (got["rider_id"], got["event_timestamp"]) == (rider, hms(t))
    np.testing.assert_equal(got["rider_stats__speed"], expected)
    assert got["trip_math__doubled"] == 2 * distance


def test_random_labels_match_a_brute_force_as_of_join(
    tiny_repo: tuple[Path, ServingPlan], training_set: TrainingSet
) -> None:
    repo, _plan = tiny_repo
    features = pd.read_parquet(repo / "data" / "rider_stats.parquet")
    frame = by_label(training_set).iloc[len(HAND_MADE) :]
    assert frame.duplicated(["rider_id", "event_timestamp"]).any()  # the case Feast collapses
    expected = [
        as_of(features, r, t) for r, t in zip(frame.rider_id, frame.event_timestamp, strict=True)
    ]
    np.testing.assert_array_equal(frame["rider_stats__speed"].to_numpy(float), expected)
    np.testing.assert_array_equal(frame["trip_math__doubled"], 2 * frame["distance"])
    assert np.isnan(expected).any()
    assert not np.isnan(expected).all()


def test_rows_come_back_sorted_by_time_one_per_label(training_set: TrainingSet) -> None:
    frame = training_set.frame
    assert len(frame) == len(HAND_MADE) + 300
    assert sorted(frame["y"]) == list(range(len(frame)))
    assert frame["event_timestamp"].is_monotonic_increasing
    assert training_set.feature_refs == ("rider_stats__speed", "trip_math__doubled")
    assert training_set.entities == (Column("rider_id", "Int64"),)
    assert training_set.request_fields == (Column("distance", "Float64"),)


def test_rounds_never_put_two_rows_sharing_keys_and_time_in_one_call() -> None:
    t0, t1 = hms("10:00:00"), hms("11:00:00")
    frame = pd.DataFrame(
        {
            "event_timestamp": [t0, t0, t0, t1, t0, t0],
            "pickup": [1, 1, 2, 1, 1, 3],
            "dropoff": [5, 6, 5, 5, 7, 8],
        }
    )
    key_sets: list[tuple[str, ...]] = [
        ("event_timestamp", "pickup"),
        ("event_timestamp", "dropoff"),
    ]
    rounds = _rounds(frame, key_sets)
    for r in set(rounds):
        members = frame[rounds == r]
        for keys in key_sets:
            assert not members.duplicated(list(keys)).any()
    assert rounds.max() == 2  # pickup 1 at t0 appears three times: three calls, no more


def test_window_keeps_labels_in_start_inclusive_end_exclusive(
    tiny_repo: tuple[Path, ServingPlan],
) -> None:
    repo, plan = tiny_repo
    window = (hms("10:30:00"), hms("12:00:00"))
    data = build_training_set(repo, plan, "pit_v1", repo / "data" / "labels.parquet", "y", window)
    times = data.frame["event_timestamp"]
    assert times.min() == hms("10:30:00")
    assert times.max() < hms("12:00:00")
    assert len(data.frame) == sum(window[0] <= hms(c[1]) < window[1] for c in HAND_MADE) + sum(
        window[0] <= t < window[1] for t in random_world(seed=11)[1].event_timestamp
    )


def test_empty_window_is_refused_before_feast(tiny_repo: tuple[Path, ServingPlan]) -> None:
    repo, plan = tiny_repo
    window = (at(24 * 30), None)
    with pytest.raises(DataError, match="no labelled rows in the window"):
        build_training_set(repo, plan, "pit_v1", repo / "data" / "labels.parquet", "y", window)


def test_missing_label_column_is_named(tiny_repo: tuple[Path, ServingPlan]) -> None:
    repo, plan = tiny_repo
    with pytest.raises(DataError, match=r"labels\.parquet has no column 'minutes'"):
        build_training_set(
            repo, plan, "pit_v1", repo / "data" / "labels.parquet", "minutes", (None, None)
        )


def test_unknown_feature_service_is_named(tiny_repo: tuple[Path, ServingPlan]) -> None:
    repo, plan = tiny_repo
    with pytest.raises(PlanError, match="no feature service 'pit_v2'"):
        build_training_set(
            repo, plan, "pit_v2", repo / "data" / "labels.parquet", "y", (None, None)
        )
