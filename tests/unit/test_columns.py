"""Request parsing: any well-formed column comes through exactly; any bad one is named."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.errors import InvalidRequestError
from serving.online.wire import read_columns
from serving.pb.carrara.v1 import prediction_pb2 as pb
from serving.repo.plan import Column

INT64 = st.integers(-(2**63), 2**63 - 1)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
EXPECTED = (Column("driver_id", "Int64"), Column("lat", "Float64"), Column("kind", "String"))


def values(kind: str, items: Sequence[object]) -> pb.Values:
    lists = {
        "int64_values": pb.Int64List,
        "double_values": pb.DoubleList,
        "string_values": pb.StringList,
        "bool_values": pb.BoolList,
    }
    return pb.Values(**{kind: lists[kind](values=items)})


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 30).flatmap(
        lambda n: st.tuples(
            st.lists(INT64, min_size=n, max_size=n),
            st.lists(FINITE, min_size=n, max_size=n),
            st.lists(st.text(max_size=8), min_size=n, max_size=n),
        )
    )
)
def test_well_formed_columns_round_trip(rows: tuple[list[int], list[float], list[str]]) -> None:
    ids, lats, kinds = rows
    request = {
        "driver_id": values("int64_values", ids),
        "lat": values("double_values", lats),
        "kind": values("string_values", kinds),
    }
    columns, n = read_columns("entities", request, EXPECTED, max_rows=100)
    assert n == len(ids)
    assert columns == {"driver_id": ids, "lat": lats, "kind": kinds}
    assert all(type(v) is int for v in columns["driver_id"])
    assert all(type(v) is float for v in columns["lat"])


def test_integers_are_accepted_for_a_double_field() -> None:
    columns, _ = read_columns(
        "request_data", {"lat": values("int64_values", [44])}, [Column("lat", "Float64")], 10
    )
    assert columns["lat"] == [44.0]
    assert type(columns["lat"][0]) is float


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 10), short=st.integers(0, 9), victim=st.sampled_from(["driver_id", "lat"]))
def test_the_column_with_a_different_length_is_named(n: int, short: int, victim: str) -> None:
    if short == n:
        short = n + 1
    lengths = {"driver_id": n, "lat": n, "kind": n, victim: short}
    request = {
        "driver_id": values("int64_values", [1] * lengths["driver_id"]),
        "lat": values("double_values", [1.0] * lengths["lat"]),
        "kind": values("string_values", ["a"] * lengths["kind"]),
    }
    with pytest.raises(InvalidRequestError, match=f"entities.{victim} has {short} values"):
        read_columns("entities", request, EXPECTED, max_rows=100)


@pytest.mark.parametrize(
    ("request_values", "needle"),
    [
        ({"driver_id": values("string_values", ["x"])}, "entities.driver_id must be int64"),
        (
            {"driver_id": values("int64_values", [1]), "extra": values("int64_values", [1])},
            "entities: 'extra' is not an input",
        ),
        ({}, "entities.driver_id is missing"),
        ({"driver_id": values("int64_values", [])}, "no rows"),
        ({"driver_id": values("int64_values", [1] * 11)}, "11 rows exceed the limit of 10"),
    ],
)
def test_bad_columns_are_named(request_values: dict[str, pb.Values], needle: str) -> None:
    with pytest.raises(InvalidRequestError, match=needle):
        read_columns("entities", request_values, [Column("driver_id", "Int64")], max_rows=10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_request_numbers_name_the_row(bad: float) -> None:
    needle = r"request_data\.lat row 1 is not a finite number"
    with pytest.raises(InvalidRequestError, match=needle):
        read_columns(
            "request_data",
            {"lat": values("double_values", [1.0, bad])},
            [Column("lat", "Float64")],
            max_rows=10,
        )
