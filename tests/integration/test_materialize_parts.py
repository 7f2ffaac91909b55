"""The parts of materialize that need neither Redis nor Feast: reading the Parquet window and
editing Feast's registry at the wire level."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import serving.batch.parquet_source as source
from serving.batch.parquet_source import EVENT_TS, latest_per_entity
from serving.errors import DataError, PlanError
from serving.repo.feast_registry import (
    _len_record,
    _parse_timestamp,
    _records,
    _timestamp,
    materialized_until,
    record_materialization,
    with_materialization,
)
from serving.repo.plan import BatchSource, Column, FeatureViewPlan

T0 = datetime(2026, 10, 1, tzinfo=UTC)

VIEW = FeatureViewPlan(
    name="v",
    join_keys=(Column("city", "String"), Column("k", "Int64")),
    features=(Column("x", "Int64"),),
    ttl_s=0,
    source=BatchSource("v.parquet", "ts", "created"),
)

ROW = st.tuples(
    st.sampled_from(["a", "b", ""]),  # city
    st.integers(0, 3),  # k
    st.integers(-3, 12),  # event time, hours after T0
    st.one_of(st.none(), st.integers(0, 2)),  # created, hours after T0
)


def _oracle(rows: list[tuple[str, int, int, int | None]], low: int, high: int) -> dict:
    """Per key: the first row (in file order) with the greatest (event, created) in window."""
    best: dict[tuple[str, int], tuple[int, int | None, int]] = {}
    for x, (city, k, ts, created) in enumerate(rows):
        if not low <= ts <= high:
            continue
        rank = (ts, -1 if created is None else created)
        held = best.get((city, k))
        if held is None or rank > (held[0], -1 if held[1] is None else held[1]):
            best[(city, k)] = (ts, created, x)
    return {key: x for key, (_, _, x) in best.items()}


@given(
    rows=st.lists(ROW, max_size=40),
    window=st.tuples(st.integers(-2, 12), st.integers(0, 8)),
    group_rows=st.integers(1, 7),
    floor=st.integers(1, 10),
)
@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_latest_row_per_entity_matches_a_plain_python_oracle(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rows: list[tuple[str, int, int, int | None]],
    window: tuple[int, int],
    group_rows: int,
    floor: int,
) -> None:
    monkeypatch.setattr(source, "COMPACT_FLOOR_ROWS", floor)
    monkeypatch.setattr(source, "BATCH_ROWS", 3)
    hour = timedelta(hours=1)
    table = pa.table(
        {
            "city": pa.array([r[0] for r in rows], pa.string()),
            "k": pa.array([r[1] for r in rows], pa.int64()),
            "ts": pa.array([T0 + r[2] * hour for r in rows], pa.timestamp("us", tz="UTC")),
            "created": pa.array(
                [None if r[3] is None else T0 + r[3] * hour for r in rows], pa.timestamp("ms")
            ),
            "x": pa.array(range(len(rows)), pa.int64()),  # the row's position in the file
        }
    )
    path = tmp_path / "v.parquet"
    pq.write_table(table, path, row_group_size=group_rows)
    low, length = window
    result = latest_per_entity(
        VIEW, [str(path)], T0 + low * hour, T0 + (low + length) * hour
    ).to_table()
    got = {
        (c, k): x
        for c, k, x in zip(*(result[n].to_pylist() for n in ("city", "k", "x")), strict=True)
    }
    assert got == _oracle(rows, low, low + length)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", [None, "UTC", "Europe/Rome"])
def test_window_ends_are_inclusive_in_every_unit_and_zone(
    tmp_path: Path, unit: str, tz: str | None
) -> None:
    step = {"s": 10**6, "ms": 10**3, "us": 1, "ns": 1}[unit]  # one unit, in microseconds
    start_us = int(T0.timestamp()) * 10**6
    end_us = start_us + 3600 * 10**6
    times_us = [start_us - step, start_us, end_us, end_us + step]
    per_us = {"s": 10**-6, "ms": 10**-3, "us": 1, "ns": 1000}[unit]
    raw = pa.array([int(t * per_us) for t in times_us], pa.int64()).cast(pa.timestamp(unit, tz=tz))
    if unit == "ns":  # a nanosecond past each end: out
        raw = pa.array(
            [start_us * 1000 - 1, start_us * 1000, end_us * 1000, end_us * 1000 + 1], pa.int64()
        ).cast(pa.timestamp(unit, tz=tz))
    view = FeatureViewPlan(
        "v", (Column("k", "Int64"),), (Column("x", "Int64"),), 0, BatchSource("v.parquet", "ts")
    )
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"k": [1, 2, 3, 4], "ts": raw, "x": [1, 2, 3, 4]}), path)
    result = latest_per_entity(view, [str(path)], T0, T0 + timedelta(hours=1)).to_table()
    assert sorted(result["k"].to_pylist()) == [2, 3]
    assert result.column_names == ["k", "x", EVENT_TS]


def test_a_folder_of_parquet_files_is_one_source(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    for i in range(3):
        table = pa.table(
            {
                "k": [i, 9],
                "ts": pa.array([T0, T0 + timedelta(minutes=i)], pa.timestamp("us")),
                "x": [i, i],
            }
        )
        pq.write_table(table, tmp_path / "v" / f"part-{i}.parquet")
    view = FeatureViewPlan(
        "v", (Column("k", "Int64"),), (Column("x", "Int64"),), 0, BatchSource("v", "ts")
    )
    files = source.source_files(view, tmp_path)
    assert len(files) == 3
    result = latest_per_entity(view, files, T0, T0 + timedelta(hours=1)).to_table()
    assert dict(zip(result["k"].to_pylist(), result["x"].to_pylist(), strict=True)) == {
        0: 0,
        1: 1,
        2: 2,
        9: 2,
    }


def test_a_timestamp_column_that_is_not_a_timestamp_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v.parquet"
    pq.write_table(pa.table({"k": [1], "ts": ["2026-10-01"], "x": [1]}), path)
    view = FeatureViewPlan(
        "v", (Column("k", "Int64"),), (Column("x", "Int64"),), 0, BatchSource("v.parquet", "ts")
    )
    with pytest.raises(DataError, match=r"timestamp column 'ts' is string, not a timestamp"):
        latest_per_entity(view, [str(path)], T0, T0)
    with pytest.raises(DataError, match="cannot read source"):
        source.source_files(
            FeatureViewPlan("v", (), (), 0, BatchSource("missing/", "ts")), tmp_path
        )


# --- Feast's registry, at the wire level --------------------------------------------------

MOMENTS = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2400, 1, 1), timezones=st.just(UTC)
)


@given(MOMENTS)
def test_timestamps_round_trip(moment: datetime) -> None:
    assert _parse_timestamp(_timestamp(moment)) == moment


def _view_record(name: str, project: str, meta: bytes = b"", extra: bytes = b"") -> bytes:
    spec = _len_record(1, name.encode()) + _len_record(2, project.encode()) + extra
    meta_record = _len_record(2, meta) if meta else b""
    return _len_record(6, _len_record(1, spec) + meta_record)


def _registry() -> bytes:
    return (
        _len_record(1, b"an entity we do not read")
        + b"\x18\x01"  # registry_schema_version-like varint
        + _view_record("a", "p", extra=_len_record(10, b"description"))
        + _view_record("a", "other project")
        + _view_record("b", "p", meta=_len_record(1, _timestamp(T0)))
        + _len_record(99, b"a field from the future")
    )


def test_recording_an_interval_keeps_every_other_byte() -> None:
    now = T0 + timedelta(days=3)
    before = _registry()
    after = with_materialization(before, "p", {"b": (T0, T0 + timedelta(days=1))}, now)
    old, new = list(_records(before)), list(_records(after))
    assert [r.raw for r in old if r.number in (1, 3, 99)] == [
        r.raw for r in new if r.number in (1, 3, 99)
    ]
    views = [r.raw for r in new if r.number == 6]
    assert views[:2] == [r.raw for r in old if r.number == 6][:2]  # a@p and a@other untouched
    assert materialized_until(after, "p") == {"b": T0 + timedelta(days=1)}
    assert materialized_until(after, "other project") == {}
    again = with_materialization(
        after, "p", {"b": (T0, T0 + timedelta(hours=2)), "a": (T0, T0)}, now
    )
    assert materialized_until(again, "p") == {"a": T0, "b": T0 + timedelta(days=1)}  # max end


def test_unknown_views_and_garbage_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"\['zzz'\] are not in the Feast registry"):
        with_materialization(_registry(), "p", {"zzz": (T0, T0)}, T0)
    with pytest.raises(PlanError, match="registry"):
        materialized_until(b"\x0a\xff\xff", "p")
    path = tmp_path / "registry.db"
    path.write_bytes(_registry())
    before, after = record_materialization(path, "p", {"a": (T0, T0 + timedelta(hours=1))}, T0)
    assert before != after
    assert materialized_until(path.read_bytes(), "p") == {"a": T0 + timedelta(hours=1)}
    assert [p.name for p in tmp_path.iterdir()] == ["registry.db"]  # no temp file left


def test_row_groups_are_pruned_by_the_event_time_column_behind_nested_columns(
    tmp_path: Path,
) -> None:
    hour = timedelta(hours=1)
    table = pa.table(
        {
            "meta": pa.array([{"a": 1, "b": 2}] * 4),  # two Parquet leaves before the times
            "created": pa.array([T0 - 100 * hour] * 4, pa.timestamp("us")),
            "ts": pa.array([T0, T0 + hour, T0 + 50 * hour, T0 + 51 * hour], pa.timestamp("us")),
            "k": [1, 2, 3, 4],
            "x": [1, 2, 3, 4],
        }
    )
    path = tmp_path / "v.parquet"
    pq.write_table(table, path, row_group_size=2)  # group 0 in the window, group 1 out
    view = FeatureViewPlan(
        "v",
        (Column("k", "Int64"),),
        (Column("x", "Int64"),),
        0,
        BatchSource("v.parquet", "ts", "created"),
    )
    scanned: list[int] = []
    result = latest_per_entity(view, [str(path)], T0, T0 + 2 * hour, scanned.append).to_table()
    assert sorted(result["k"].to_pylist()) == [1, 2]
    assert sum(scanned) == 4
