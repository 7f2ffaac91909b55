"""Read plans and the pure parts of the online store: key bytes, layouts, write arguments."""

from __future__ import annotations

import string
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.errors import InvalidRequestError, PlanError
from serving.repo.plan import (
    Column,
    FeatureServicePlan,
    FeatureViewPlan,
    OnDemandViewPlan,
    Projection,
    ServingPlan,
)
from serving.store import codec, encoding
from serving.store.read_plan import build_read_plan, key_encoder
from serving.store.reads import _encode_keys
from serving.store.write_guard import FramedRows, RowBatch, frame_rows, framed_batches, write_script

INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
TEXT = st.text(max_size=12)
BYTES = st.binary(max_size=12)
VALUES = {"Int64": INT64, "Int32": INT32, "String": TEXT, "Bytes": BYTES}


def _view(name: str, keys: list[tuple[str, str]], features: list[tuple[str, str]], ttl_s: int = 0):
    return FeatureViewPlan(
        name=name,
        join_keys=tuple(Column(n, d) for n, d in keys),
        features=tuple(Column(n, d) for n, d in features),
        ttl_s=ttl_s,
        source=None,
    )


def _plan() -> ServingPlan:
    views = {
        "driver_stats": _view(
            "driver_stats",
            [("driver_id", "Int64")],
            [
                ("rate", "Float32"),
                ("trips", "Int64"),
                ("vehicle", "String"),
                ("tags", "Array(String)"),
            ],
            ttl_s=3600,
        ),
        "zone_stats": _view("zone_stats", [("zone_id", "Int64")], [("ratio", "Float64")]),
        "route_stats": _view(
            "route_stats",
            [("pickup_zone_id", "Int64"), ("dropoff_zone_id", "Int64")],
            [("eta_s", "Float64")],
        ),
    }
    odfv = OnDemandViewPlan(
        "geo", (Column("lat", "Float64"),), (), (Column("km", "Float64"),), "f", ""
    )
    service = FeatureServicePlan(
        "eta",
        (
            Projection("driver_stats", "driver_stats", {}, ("rate", "trips", "vehicle", "tags")),
            Projection("zone_stats", "pickup_zone", {"zone_id": "pickup_zone_id"}, ("ratio",)),
            Projection("zone_stats", "dropoff_zone", {"zone_id": "dropoff_zone_id"}, ("ratio",)),
            Projection("route_stats", "route_stats", {}, ("eta_s",)),
            Projection("geo", "geo", {}, ("km",)),
        ),
    )
    return ServingPlan("proj", "fp", views, {"geo": odfv}, {"eta": service})


# --- key encoding -------------------------------------------------------------------------


@st.composite
def key_columns(draw: st.DrawFn) -> tuple[list[str], list[str], list[list[object]]]:
    names = draw(
        st.lists(
            st.sampled_from(["a", "b_id", "zone", "Z", "é"]), min_size=1, max_size=3, unique=True
        )
    )
    dtypes = [draw(st.sampled_from(sorted(VALUES))) for _ in names]
    rows = draw(st.integers(0, 5))
    columns = [draw(st.lists(VALUES[d], min_size=rows, max_size=rows)) for d in dtypes]
    return names, dtypes, columns


@given(key_columns(), st.sampled_from(["proj", "carrara", "ü"]))
@settings(max_examples=150, deadline=None)
def test_key_encoder_matches_the_codec_byte_for_byte(
    keys: tuple[list[str], list[str], list[list[object]]], project: str
) -> None:
    names, dtypes, columns = keys
    order = sorted(range(len(names)), key=names.__getitem__)  # the encoder takes Feast order
    encode = key_encoder([names[i] for i in order], [dtypes[i] for i in order], project)
    expected = encoding.encode_entity_keys(names, dtypes, columns, project)
    assert encode([columns[i] for i in order]) == expected


@pytest.mark.parametrize(
    ("column", "value"),
    [("driver_id", 1.5), ("driver_id", "7"), ("driver_id", None), ("driver_id", 2**63)],
)
def test_bad_entity_values_are_refused_naming_the_row(column: str, value: object) -> None:
    plan = build_read_plan(_plan(), _plan().feature_service("eta").projections)
    with pytest.raises(InvalidRequestError, match=r"entities row 1: driver_id="):
        _encode_keys(plan.groups[0], {"driver_id": [1, value]})


# --- read plans ---------------------------------------------------------------------------


def test_read_plan_groups_views_by_the_request_columns_that_key_them() -> None:
    plan = build_read_plan(_plan(), _plan().feature_service("eta").projections)
    assert plan.entity_columns == ("driver_id", "pickup_zone_id", "dropoff_zone_id")
    assert [g.columns for g in plan.groups] == [
        ("driver_id",),
        ("pickup_zone_id",),
        ("dropoff_zone_id",),
        ("dropoff_zone_id", "pickup_zone_id"),  # Feast's key order: sorted by join key name
    ]
    assert [g.join_keys for g in plan.groups][1] == ("zone_id",)
    assert plan.view_names == ("driver_stats", "pickup_zone", "dropoff_zone", "route_stats")
    assert "geo__km" not in plan.feature_names  # on-demand: computed by the server
    driver = plan.groups[0]
    assert driver.fields[:4] == tuple(
        codec.field_name("driver_stats", f) for f in ("rate", "trips", "vehicle", "tags")
    )
    assert driver.fields[-1] == b"_ts:driver_stats"
    assert plan.groups[1].fields == (codec.field_name("zone_stats", "ratio"), b"_ts:zone_stats")
    assert plan.ttl_us.tolist() == [3600 * 10**6, 0, 0, 0]


def test_read_plan_follows_a_model_feature_order_and_leaves_unknown_columns_alone() -> None:
    order = ["geo__km", "route_stats__eta_s", "request_lat", "driver_stats__trips"]
    plan = build_read_plan(_plan(), _plan().feature_service("eta").projections, order)
    assert plan.feature_names == tuple(order)
    assert sorted(plan.read_columns.tolist()) == [1, 3]
    assert [g.columns for g in plan.groups] == [
        ("driver_id",),
        ("dropoff_zone_id", "pickup_zone_id"),
    ]
    values_at, ts_at = plan.destinations(2)
    # group by group, row by row: driver_stats__trips (col 3), then route_stats__eta_s (col 1)
    assert values_at.tolist() == [3, 4 + 3, 1, 4 + 1]
    assert ts_at.tolist() == [0, 2, 1, 3]


def test_read_plan_takes_categories_for_string_features_only() -> None:
    projections = _plan().feature_service("eta").projections
    plan = build_read_plan(
        _plan(), projections, categories={"driver_stats__vehicle": {b"\x12\x02xl": 2.0}}
    )
    (vehicle,) = plan.groups[0].categorical
    assert vehicle.categories == {b"\x12\x02xl": 2.0}
    with pytest.raises(PlanError, match="Float32"):
        build_read_plan(_plan(), projections, categories={"driver_stats__rate": {}})
    with pytest.raises(PlanError, match="does not have"):
        build_read_plan(_plan(), projections, categories={"nope__x": {}})
    with pytest.raises(PlanError, match="duplicate"):
        build_read_plan(_plan(), projections, ["route_stats__eta_s", "route_stats__eta_s"])


def test_string_and_list_features_are_not_decoded_as_numbers() -> None:
    plan = build_read_plan(_plan(), _plan().feature_service("eta").projections)
    driver = plan.groups[0]
    assert driver.numeric_columns.tolist() == [0, 1]  # rate, trips; not vehicle, tags
    assert driver.numeric([b"r", b"t", b"v", b"l", b"ts"]) == (b"r", b"t")
    assert driver.timestamps([b"r", b"t", b"v", b"l", b"ts"]) == (b"ts",)


# --- write arguments ----------------------------------------------------------------------


@given(
    st.lists(st.lists(st.binary(max_size=300), min_size=1, max_size=4), max_size=12),
    st.integers(1, 5),
)
def test_rows_are_framed_as_length_prefixed_values(rows: list[list[bytes]], size: int) -> None:
    width = max((len(r) for r in rows), default=1)
    rows = [r + [b""] * (width - len(r)) for r in rows]
    columns = [[r[c] for r in rows] for c in range(width)]
    framed, ends = frame_rows(columns[0], columns[1:])
    expected = [b"".join(struct.pack("<I", len(v)) + v for v in r) for r in rows]
    assert framed == b"".join(expected)
    assert ends.tolist() == np.cumsum([len(e) for e in expected]).tolist()
    keys = [b"k%d" % i for i in range(len(rows))]
    batches = list(framed_batches(keys, columns[0], columns[1:], size))
    assert [b.keys for b in batches] == [keys[i : i + size] for i in range(0, len(rows), size)]
    assert b"".join(b.rows for b in batches) == framed
    assert FramedRows.of(RowBatch(keys, columns[0], columns[1:])).rows == framed


def test_framing_refuses_columns_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        frame_rows([b"t1", b"t2"], [[b"a"]])


def test_write_script_is_valid_for_any_feature_count() -> None:
    for features in (0, 1, 40, 41, 200):
        script = write_script(features).decode()
        assert script.count("redis.call('HSET'") == 1
    with pytest.raises(ValueError, match=">= 0"):
        write_script(-1)


@given(st.lists(st.integers(0, 2**40), max_size=20))
def test_numeric_layout_covers_every_cell_once(rows: list[int]) -> None:
    plan = build_read_plan(_plan(), _plan().feature_service("eta").projections)
    n = len(rows)
    values_at, ts_at = plan.destinations(n)
    width, views = len(plan.feature_names), len(plan.view_names)
    assert (
        len(set(values_at.tolist()))
        == len(values_at)
        == n * sum(len(g.numeric_columns) for g in plan.groups)
    )
    assert sorted(ts_at.tolist()) == list(range(n * views))
    assert all(0 <= i < n * width for i in values_at.tolist())


def test_key_encoder_handles_string_keys_with_any_unicode() -> None:
    encode = key_encoder(["city"], ["String"], "p")
    values: list[Any] = ["", "north", "ü" * 3, string.printable]
    assert encode([values]) == encoding.encode_entity_keys(["city"], ["String"], [values], "p")
    column: Any = np.array(["a"], dtype=object)  # as the servicer hands them over
    assert encode([column]) == encoding.encode_entity_keys(["city"], ["String"], [["a"]], "p")
