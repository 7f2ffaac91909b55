"""Offline windows (serving/repo/windows.py) against the definition in its docstring, row by row.

The brute force below is written straight from the docstring: the events of the entity whose
tile is in [tile(A) - W/hop + 1, tile(A)] and whose time is <= A, nulls (and NaN) skipped, an
event with a null key or time never counted; empty: sum 0, count 0, mean/min/max null; null
throughout where the online store holds no value (no event yet, or aged past the ttl).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.errors import DataError
from serving.repo.plan import BatchSource, Column, FeatureViewPlan, WindowAggregation
from serving.repo.windows import (
    EVENT,
    read_events,
    tile_of,
    window_index,
    window_values,
    windows_as_of,
)

US = 1_000_000
FUNCTIONS = ("sum", "count", "mean", "min", "max")
KEYS = (Column("a", "Int64"), Column("b", "String"))
COLUMNS = (Column("x", "Int64"), Column("y", "Float64"))


def output_type(function: str, column: str) -> str:
    if function == "count" or (column == "x" and function != "mean"):
        return "Int64"
    return "Float64"


def windowed_view(
    hop_s: int,
    windows: tuple[int, ...],
    source: BatchSource | None = None,
    ttl_s: int | None = None,
) -> FeatureViewPlan:
    aggregations = tuple(
        WindowAggregation(f"{f}_{c.name}_{w}s", c.name, f, w)
        for c in COLUMNS
        for f in FUNCTIONS
        for w in windows
    )
    return FeatureViewPlan(
        name="v",
        join_keys=KEYS,
        features=tuple(Column(a.name, output_type(a.function, a.column)) for a in aggregations),
        ttl_s=ttl_s,
        source=source or BatchSource("events.parquet", "ts"),
        aggregations=aggregations,
        event_columns=COLUMNS,
        hop_s=hop_s,
    )


def held_online(view: FeatureViewPlan, events: list[dict[str, Any]], key: Any, at: int) -> bool:
    """Whether the store holds values as of `at`: an event of the entity at or before it,
    and (ttl > 0) its windows emptied at most ttl before `at`."""
    times = [
        e["t"] for e in events if (e["a"], e["b"]) == key and e["t"] is not None and e["t"] <= at
    ]
    if not times:
        return False
    longest = max(a.window_s for a in view.aggregations)
    emptied = (tile_of(max(times), view.hop_s) + longest // view.hop_s) * view.hop_s * US
    return not view.ttl_s or at - view.ttl_s * US <= emptied


def brute_force(
    events: list[dict[str, Any]], agg: WindowAggregation, view: FeatureViewPlan, key: Any, at: int
) -> Any:
    hop_s = view.hop_s
    if not held_online(view, events, key, at):
        return None
    first = tile_of(at, hop_s) - agg.window_s // hop_s + 1
    values = [
        e[agg.column]
        for e in events
        if (e["a"], e["b"]) == key
        and None not in (e["a"], e["b"], e["t"])
        and first <= tile_of(e["t"], hop_s) <= tile_of(at, hop_s)
        and e["t"] <= at
        and e[agg.column] is not None
        and not (isinstance(e[agg.column], float) and math.isnan(e[agg.column]))
    ]
    if agg.function == "count":
        return len(values)
    if agg.function == "sum":
        return sum(values) if agg.column == "x" else math.fsum(values)
    if not values:
        return None
    if agg.function == "mean":
        return math.fsum(values) / len(values)
    return min(values) if agg.function == "min" else max(values)


def events_table(events: list[dict[str, Any]]) -> pa.Table:
    return pa.table(
        {
            "a": pa.array([e["a"] for e in events], pa.int64()),
            "b": pa.array([e["b"] for e in events], pa.string()),
            "x": pa.array([e["x"] for e in events], pa.int64()),
            "y": pa.array([e["y"] for e in events], pa.float64()),
            EVENT: pa.array([e["t"] for e in events], pa.timestamp("us", "UTC")),
        }
    )


def assert_matches(
    view: FeatureViewPlan,
    events: list[dict[str, Any]],
    rows: list[tuple[tuple[Any, ...], int]],
    got: pa.Table,
) -> None:
    for agg in view.aggregations:
        column = got[agg.name].to_pylist()
        for i, (key, at) in enumerate(rows):
            expected = brute_force(events, agg, view, key, at)
            where = f"{agg.name} for {key} as of {at}"
            if expected is None or isinstance(expected, int):
                assert column[i] == expected, where
            else:
                scale = math.fsum(abs(e["y"]) for e in events if e["y"] is not None) or 1.0
                assert math.isclose(column[i], expected, rel_tol=1e-9, abs_tol=1e-12 * scale), where


HOPS = st.sampled_from([1, 3, 10])
NULLABLE_FLOAT = st.one_of(
    st.none(),
    st.just(math.nan),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.integers(-5, 5).map(float),
)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[FeatureViewPlan, list[dict[str, Any]], list[Any]]:
    hop_s = draw(HOPS)
    windows = tuple(
        sorted(set(draw(st.lists(st.sampled_from([1, 2, 5, 12]), min_size=1, max_size=3))))
    )
    ttl_s = draw(st.sampled_from([None, 0, hop_s, 7 * hop_s]))
    view = windowed_view(hop_s, tuple(hop_s * n for n in windows), ttl_s=ttl_s)
    span = 8 * hop_s * US
    # times around 0 (before 1970 too), often on tile boundaries and repeated
    boundary = st.integers(-8, 8).map(lambda n: n * hop_s * US + draw(st.sampled_from([0, -1, 1])))
    times = st.one_of(st.integers(-span, span), boundary)
    key_a = st.one_of(st.none(), st.integers(1, 3))
    key_b = st.one_of(st.none(), st.sampled_from(["p", "q"]))
    event = st.fixed_dictionaries(
        {
            "a": key_a,
            "b": key_b,
            "t": st.one_of(st.none(), times),
            "x": st.one_of(st.none(), st.integers(-(2**40), 2**40)),
            "y": NULLABLE_FLOAT,
        }
    )
    events = draw(st.lists(event, max_size=40))
    # entity rows: known keys, keys with no events (a=4, b="z"), at any time
    row = st.tuples(
        st.tuples(st.integers(1, 4), st.sampled_from(["p", "q", "z"])), st.one_of(times, boundary)
    )
    rows = draw(st.lists(row, min_size=1, max_size=25))
    return view, events, rows


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_windows_equal_the_definition_row_by_row(
    world: tuple[FeatureViewPlan, list[dict[str, Any]], list[Any]],
) -> None:
    view, events, rows = world
    keys = [
        pa.array([k[0] for k, _ in rows], pa.int64()),
        pa.array([k[1] for k, _ in rows], pa.string()),
    ]
    at = np.array([t for _, t in rows], dtype=np.int64)
    got = windows_as_of(view, events_table(events), keys, at)
    assert got.num_rows == len(rows)
    assert_matches(view, events, rows, got)


@settings(max_examples=100, deadline=None)
@given(worlds())
def test_one_index_serves_many_lookups_and_a_subset_of_features(
    world: tuple[FeatureViewPlan, list[dict[str, Any]], list[Any]],
) -> None:
    view, events, rows = world
    index = window_index(view, events_table(events))
    keys = [np.array([k[0] for k, _ in rows]), np.array([k[1] for k, _ in rows], dtype=object)]
    at = np.array([t for _, t in rows], dtype=np.int64)
    names = [a.name for a in view.aggregations[::3]]
    first = window_values(index, keys, at, names)
    assert first.column_names == names
    again = window_values(index, keys, at)
    assert again.select(names).equals(first)
    assert_matches(view, events, rows, again)


def test_integer_sums_are_exact_beyond_float_precision() -> None:
    """Sums past 2**53 stay exact, and so does a window after a history whose running total
    overflows int64."""
    view = windowed_view(10, (10, 1000))
    big = 2**62
    events = [
        {"a": 1, "b": "p", "t": i * 10 * US, "x": x, "y": 0.0}
        for i, x in enumerate([big, big, -big, 3, -big, 1])
    ]
    at = np.array([0, 30 * US, 50 * US], dtype=np.int64)
    got = windows_as_of(view, events_table(events), [[1] * 3, ["p"] * 3], at)
    assert got["sum_x_1000s"].to_pylist() == [big, big + 3, 4]
    assert got["sum_x_10s"].to_pylist() == [big, 3, 1]
    assert got["max_x_1000s"].to_pylist() == [big, big, big]
    assert got["min_x_1000s"].to_pylist() == [big, -big, -big]


def test_a_float_sum_does_not_carry_the_error_of_a_long_history() -> None:
    """A window of small values after a long history of huge ones: exact, where subtracting
    cumulative sums would have lost every digit."""
    view = windowed_view(1, (1,))
    n = 100_000
    events = [{"a": 1, "b": "p", "t": i * US, "x": 0, "y": 1e16 + i} for i in range(n)]
    events += [{"a": 1, "b": "p", "t": n * US + i, "y": 0.1 * (i + 1), "x": 0} for i in range(3)]
    got = windows_as_of(view, events_table(events), [[1], ["p"]], np.array([n * US + 5]))
    assert got["sum_y_1s"].to_pylist()[0] == pytest.approx(0.6, rel=1e-15)
    assert got["count_y_1s"].to_pylist() == [3]


def test_declared_output_types_round_as_the_online_store_writes() -> None:
    aggs = (
        WindowAggregation("mean_x", "x", "mean", 10),
        WindowAggregation("sum_y", "y", "sum", 10),
        WindowAggregation("max_y", "y", "max", 10),
    )
    view = FeatureViewPlan(
        "v",
        KEYS,
        (Column("mean_x", "Int64"), Column("sum_y", "Float32"), Column("max_y", "Int32")),
        None,
        BatchSource("e", "ts"),
        aggregations=aggs,
        event_columns=COLUMNS,
        hop_s=10,
    )
    events = [
        {"a": 1, "b": "p", "t": 0, "x": -2, "y": 0.1},
        {"a": 1, "b": "p", "t": 1, "x": -3, "y": -7.9},
    ]
    got = windows_as_of(view, events_table(events), [[1, 2], ["p", "p"]], np.array([US, US]))
    assert got.schema.types == [pa.int64(), pa.float32(), pa.int32()]
    assert got["mean_x"].to_pylist() == [-2, None]  # -2.5 truncated toward zero, as online
    assert got["sum_y"].to_pylist() == [np.float32(0.1 - 7.9), None]  # 2: no event, no value
    assert got["max_y"].to_pylist() == [0, None]


def test_events_read_through_field_mapping_from_hive_partitions(tmp_path: Path) -> None:
    for day, rows in (("2024-01-01", [(1, 5)]), ("2024-01-02", [(1, 7), (2, 1)])):
        folder = tmp_path / "events" / f"day={day}"
        folder.mkdir(parents=True)
        table = pa.table(
            {
                "a": pa.array([r[0] for r in rows], pa.int64()),
                "b": pa.array(["p"] * len(rows)),
                "raw_x": pa.array([r[1] for r in rows], pa.int64()),
                "y": pa.array([1.0] * len(rows)),
                "ts": pa.array([US * r[1] for r in rows], pa.timestamp("us")),
            }
        )
        pq.write_table(table, folder / "part.parquet")
    view = windowed_view(10, (10,), BatchSource("events", "ts", field_mapping={"raw_x": "x"}))
    events = read_events(view, tmp_path)
    assert events.num_rows == 3
    assert sorted(events["x"].to_pylist()) == [1, 5, 7]
    got = windows_as_of(view, events, [[1, 2, 3], ["p", "p", "p"]], np.full(3, 9 * US))
    assert got["sum_x_10s"].to_pylist() == [12, 1, None]  # 3: no event, no value


def test_a_source_without_an_event_column_is_refused_by_name(tmp_path: Path) -> None:
    ts = pa.array([0], pa.timestamp("us"))
    pq.write_table(
        pa.table({"a": [1], "b": ["p"], "x": [1], "ts": ts}), tmp_path / "events.parquet"
    )
    with pytest.raises(DataError, match="no column 'y'"):
        read_events(windowed_view(10, (10,)), tmp_path)


def test_consistency_compares_windowed_floats_up_to_summation_order() -> None:
    """check-consistency: 1e-9 relative for windowed Float64 outputs, exact elsewhere."""
    from serving.batch.consistency import WINDOW_RTOL, _equal

    online = np.array([[0.1 + 0.2, 5.0, math.nan, 1e300]])
    offline = np.array([[0.3, 5.0 + 1e-14, math.nan, 1e300 * (1 + 1e-12)]])
    exact = _equal(online, offline, np.bool_(False))
    assert exact.tolist() == [[False, False, True, False]]
    tolerance = np.array([WINDOW_RTOL, 0.0, WINDOW_RTOL, WINDOW_RTOL])
    assert _equal(online, offline, np.bool_(False), tolerance).tolist() == [
        [True, False, True, True]
    ]
    assert not _equal(np.array([1.0]), np.array([1.0 + 1e-8]), np.bool_(False), WINDOW_RTOL)[0]
