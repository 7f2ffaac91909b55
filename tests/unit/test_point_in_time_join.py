"""Carrara's own point-in-time join (serving/point_in_time.py) on hand-made feature rows.

Each hand-made entity row sits where a leak or an off-by-one would change the answer: ttl
boundaries, exact-timestamp ties, rows created after the entity time, rows before any
feature row. A randomised set is checked against a brute-force as-of join written from the
rule in the module docstring. (Equality with Feast itself: tests/integration/test_batch.py.)
"""

from __future__ import annotations

import math
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.batch.point_in_time import FeatureTable, load_feature_table
from serving.errors import DataError, PlanError
from serving.repo.plan import BatchSource, Column, FeatureViewPlan

DAY = datetime(2026, 10, 1, tzinfo=UTC)
NAN = math.nan


def hms(text: str | None) -> datetime | None:
    if text is None:
        return None
    h, m, s = (int(part) for part in text.split(":"))
    return DAY + timedelta(hours=h, minutes=m, seconds=s)


def ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1_000


def rider_view(ttl_s: int = 7_200, created: str | None = "created") -> FeatureViewPlan:
    return FeatureViewPlan(
        name="rider_stats",
        join_keys=(Column("rider_id", "Int64"),),
        features=(Column("speed", "Float64"), Column("tier", "String")),
        ttl_s=ttl_s,
        source=BatchSource(
            path="data/riders.parquet",
            timestamp_field="ts",
            created_timestamp_column=created,
            field_mapping={"spd": "speed"},  # source column -> feature name
        ),
    )


# (rider, event time, created time, speed)
FEATURE_ROWS = [
    (1, "10:00:00", "10:00:30", 1.0),
    (1, "11:00:00", "11:00:30", 2.0),
    (1, "13:00:00", "13:00:30", 3.0),
    (2, "10:00:00", "10:00:30", 10.0),
    (3, "10:00:00", "10:00:30", 20.0),
    (3, "11:00:00", "12:30:00", 21.0),  # a late backfill: stamped 11:00, known from 12:30
    (5, "10:00:00", "10:00:20", 51.0),  # two versions of one event time, file order reversed
    (5, "10:00:00", "10:00:10", 50.0),
    (6, "09:00:00", "09:00:00", 59.0),
    (6, "10:00:00", None, 60.0),  # no created time: never visible (Feast's cutoff)
    (7, None, "09:00:00", 70.0),  # no event time: never joined
    (8, "09:00:00", "09:00:00", 79.0),
    (8, "10:00:00", "12:00:00", 80.0),  # two late rows in a row
    (8, "10:30:00", "12:00:00", 81.0),
    (9, "10:00:00", "10:00:00", 90.0),  # an exact duplicate of (event, created): later row wins
    (9, "10:00:00", "10:00:00", 91.0),
]

# (rider, entity time, expected speed, why)
HAND_MADE = [
    (1, "09:59:59", NAN, "before any feature row"),
    (1, "10:30:00", 1.0, "latest row"),
    (1, "10:59:59", 1.0, "the 11:00 row is one second in the future"),
    (1, "11:00:00", 1.0, "the 11:00 row exists at 11:00 but is created at 11:00:30"),
    (1, "11:00:30", 2.0, "created exactly at t: known"),
    (1, "13:00:31", 3.0, "latest row"),
    (2, "12:00:00", 10.0, "exactly ttl old: still valid (inclusive)"),
    (2, "12:00:01", NAN, "one second older than the ttl"),
    (3, "12:00:00", 20.0, "the 11:00 row is backfilled at 12:30"),
    (3, "12:30:00", 21.0, "the backfill is known from 12:30"),
    (3, "13:00:01", NAN, "both rows older than the ttl"),
    (4, "12:00:00", NAN, "unknown rider"),
    (5, "09:59:59", NAN, "before both versions"),
    (5, "10:00:15", 50.0, "tie on event time: the later version is created after t"),
    (5, "10:00:20", 51.0, "tie on event time: the latest created wins"),
    (6, "10:30:00", 59.0, "the 10:00 row has no created time; the 09:00 row is valid"),
    (6, "11:00:01", NAN, "only the invisible row is inside the ttl"),
    (7, "12:00:00", NAN, "the only row has no event time"),
    (8, "11:00:00", 79.0, "steps back over two late rows; 09:00 is exactly ttl old"),
    (8, "11:00:01", NAN, "steps back over two late rows to one older than the ttl"),
    (8, "12:00:00", 81.0, "both late rows are known now; the latest event wins"),
    (9, "10:00:00", 91.0, "identical times: the later file row"),
]


def write_rows(repo: Path, rows: list[tuple[int, str | None, str | None, float]]) -> None:
    (repo / "data").mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "rider_id": pa.array([r[0] for r in rows], pa.int64()),
            "ts": pa.array([hms(r[1]) for r in rows], pa.timestamp("us", tz="UTC")),
            "created": pa.array([hms(r[2]) for r in rows], pa.timestamp("us", tz="UTC")),
            "spd": pa.array([r[3] for r in rows], pa.float64()),
            "tier": pa.array([f"t{r[0]}" for r in rows], pa.string()),
        }
    )
    pq.write_table(table, repo / "data" / "riders.parquet", row_group_size=5)


def speeds(table: FeatureTable, riders: list[int], times: list[int]) -> list[float]:
    rows = table.match([np.array(riders, np.int64)], np.array(times, np.int64))
    values = table.columns["speed"].to_pylist()
    return [NAN if r < 0 else values[r] for r in rows]


@pytest.fixture(scope="module")
def riders(tmp_path_factory: pytest.TempPathFactory) -> FeatureTable:
    repo = tmp_path_factory.mktemp("pit")
    write_rows(repo, FEATURE_ROWS)
    return load_feature_table(rider_view(), repo, ["speed", "tier"])


@pytest.mark.parametrize(
    ("rider", "at", "expected", "why"), HAND_MADE, ids=[c[3] for c in HAND_MADE]
)
def test_hand_made_entity_rows_get_the_feast_row(
    riders: FeatureTable, rider: int, at: str, expected: float, why: str
) -> None:
    moment = hms(at)
    assert moment is not None
    got = speeds(riders, [rider], [ns(moment)])[0]
    assert got == expected or (math.isnan(got) and math.isnan(expected)), why


def test_a_batch_gives_the_same_answers_as_single_rows(riders: FeatureTable) -> None:
    times = [ns(m) for _, t, _, _ in HAND_MADE if (m := hms(t)) is not None]
    got = speeds(riders, [c[0] for c in HAND_MADE], times)
    np.testing.assert_array_equal(got, [c[2] for c in HAND_MADE])


def test_feature_columns_follow_the_matched_row(riders: FeatureTable) -> None:
    moment = hms("12:00:00")
    assert moment is not None
    rows = riders.match([np.array([1, 3, 8])], np.full(3, ns(moment)))
    assert [riders.columns["tier"][int(r)].as_py() for r in rows] == ["t1", "t3", "t8"]


def test_no_ttl_keeps_old_rows_valid(tmp_path: Path) -> None:
    write_rows(tmp_path, FEATURE_ROWS)
    table = load_feature_table(rider_view(ttl_s=0), tmp_path, ["speed"])
    late = hms("23:00:00")
    assert late is not None
    assert speeds(table, [2, 3], [ns(late), ns(late)]) == [10.0, 21.0]


def test_without_a_created_column_ties_go_to_the_later_file_row(tmp_path: Path) -> None:
    write_rows(tmp_path, FEATURE_ROWS)
    table = load_feature_table(rider_view(created=None), tmp_path, ["speed"])
    at = hms("10:00:00")
    assert at is not None
    assert speeds(table, [5, 3, 6], [ns(at)] * 3) == [50.0, 20.0, 60.0]


def test_composite_and_string_keys(tmp_path: Path) -> None:
    view = FeatureViewPlan(
        name="routes",
        join_keys=(Column("city", "String"), Column("zone", "Int64")),
        features=(Column("minutes", "Float64"),),
        ttl_s=0,
        source=BatchSource(path=str(tmp_path / "routes.parquet"), timestamp_field="ts"),
    )
    at = DAY + timedelta(hours=1)
    pq.write_table(
        pa.table(
            {
                "city": ["a", "a", "b", "b"],
                "zone": pa.array([1, 2, 1, 1], pa.int32()),  # narrower than Int64: widened
                "ts": pa.array([DAY] * 3 + [at], pa.timestamp("ms")),  # naive: UTC
                "minutes": [1.0, 2.0, 3.0, 4.0],
            }
        ),
        tmp_path / "routes.parquet",
    )
    table = load_feature_table(view, tmp_path, ["minutes"])
    keys = [np.array(["a", "b", "b", "a", "c"], dtype=object), np.array([2, 1, 2, 1, 1])]
    rows = table.match(keys, np.full(5, ns(at)))
    got = [NAN if r < 0 else table.columns["minutes"][int(r)].as_py() for r in rows]
    np.testing.assert_array_equal(got, [2.0, 4.0, NAN, 1.0, NAN])


def test_a_missing_source_column_is_named(tmp_path: Path) -> None:
    write_rows(tmp_path, FEATURE_ROWS)
    view = rider_view()
    with pytest.raises(DataError, match="no column 'spd2'"):
        load_feature_table(
            FeatureViewPlan(
                view.name,
                view.join_keys,
                view.features,
                view.ttl_s,
                BatchSource("data/riders.parquet", "ts", "created", {"spd2": "speed"}),
            ),
            tmp_path,
            ["speed"],
        )
    with pytest.raises(PlanError, match="no feature 'pace'"):
        load_feature_table(view, tmp_path, ["pace"])


# --- randomised, against a brute-force oracle -----------------------------------------------

MINUTE = 60 * 1_000_000_000
feature_rows = st.lists(
    st.tuples(
        st.integers(0, 3),  # rider
        st.integers(0, 30),  # event minute
        st.one_of(st.none(), st.integers(0, 10)),  # created: minutes after the event, or null
        st.integers(-1000, 1000),  # value
    ),
    min_size=0,
    max_size=40,
)
queries = st.lists(st.tuples(st.integers(0, 4), st.integers(-2, 45)), min_size=1, max_size=30)


def oracle(
    rows: list[tuple[int, int, int | None, int]], rider: int, minute: int, ttl_min: int
) -> float:
    """The rule, literally: latest (event, created) among rows valid at t; file order last."""
    valid = [
        (event, event + created, i, value)
        for i, (r, event, created, value) in enumerate(rows)
        if r == rider
        and created is not None
        and event <= minute
        and event + created <= minute
        and (ttl_min == 0 or event >= minute - ttl_min)
    ]
    return float(max(valid)[3]) if valid else NAN


@settings(max_examples=150, deadline=None)
@given(rows=feature_rows, asks=queries, ttl_min=st.sampled_from([0, 5, 12]))
def test_random_tables_match_the_brute_force_join(
    rows: list[tuple[int, int, int | None, int]],
    asks: list[tuple[int, int]],
    ttl_min: int,
) -> None:
    base = ns(DAY)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "riders.parquet"
        pq.write_table(
            pa.table(
                {
                    "rider_id": pa.array([r[0] for r in rows], pa.int64()),
                    "ts": pa.array([base + r[1] * MINUTE for r in rows], pa.timestamp("ns")),
                    "created": pa.array(
                        [None if r[2] is None else base + (r[1] + r[2]) * MINUTE for r in rows],
                        pa.timestamp("ns"),
                    ),
                    "spd": pa.array([float(r[3]) for r in rows], pa.float64()),
                    "tier": pa.array(["x"] * len(rows), pa.string()),
                }
            ),
            path,
        )
        view = rider_view(ttl_s=ttl_min * 60)
        view = FeatureViewPlan(
            view.name, view.join_keys, view.features, view.ttl_s,
            BatchSource(str(path), "ts", "created", {"spd": "speed"}),
        )  # fmt: skip
        table = load_feature_table(view, Path(tmp), ["speed"])
    got = speeds(table, [a[0] for a in asks], [base + a[1] * MINUTE for a in asks])
    expected = [oracle(rows, rider, minute, ttl_min) for rider, minute in asks]
    np.testing.assert_array_equal(got, expected)
