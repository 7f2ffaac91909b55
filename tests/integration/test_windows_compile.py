"""Stream feature views with aggregations, compiled from a real `feast apply`: Feast's names
and types, the tile width, and what Carrara refuses (per view, naming the construct)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from serving.errors import PlanError
from serving.repo.compile import apply_repo
from serving.repo.plan import MATERIALIZE, SERVE, ServingPlan, WindowAggregation

pytestmark = [pytest.mark.integration]

DEFINITIONS = """
from datetime import timedelta

from feast import Entity, FeatureService, Field, FileSource, PushSource
from feast.aggregation import Aggregation
from feast.stream_feature_view import StreamFeatureView
from feast.types import Float32, Int64
from feast.value_type import ValueType

zone = Entity(name="zone", join_keys=["zone_id"], value_type=ValueType.INT64)
events = PushSource(
    name="events",
    batch_source=FileSource(path="data/events.parquet", timestamp_field="event_timestamp"),
)


def view(name, aggregations, schema=(), **extra):
    return StreamFeatureView(
        name=name, entities=[zone], source=events, aggregations=aggregations,
        schema=[Field(name="zone_id", dtype=Int64), *schema],
        timestamp_field="event_timestamp", **extra,
    )


plain = view(
    "plain",
    [Aggregation(column="trips", function="sum", time_window=timedelta(minutes=1)),
     Aggregation(column="trips", function="avg", time_window=timedelta(minutes=15)),
     Aggregation(column="fare", function="max", time_window=timedelta(seconds=90),
                 name="top_fare")],
    schema=[Field(name="trips", dtype=Int64), Field(name="top_fare", dtype=Float32)],
)
odd_window = view(
    "odd_window",
    [Aggregation(column="trips", function="sum", time_window=timedelta(seconds=45))],
    enable_tiling=True, tiling_hop_size=timedelta(seconds=10),
)
unknown_function = view(
    "unknown_function",
    [Aggregation(column="trips", function="std", time_window=timedelta(minutes=5))],
)
service = FeatureService(name="service", features=[plain])
integer_mean = view(
    "integer_mean",
    [Aggregation(column="trips", function="mean", time_window=timedelta(minutes=5))],
    schema=[Field(name="mean_trips_300s", dtype=Int64)],
)
"""


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> ServingPlan:
    repo = tmp_path_factory.mktemp("windows_compile") / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "definitions.py").write_text(DEFINITIONS)
    (repo / "feature_store.yaml").write_text(
        "project: windows_compile\nregistry: data/registry.db\nprovider: local\n"
        'online_store:\n    type: redis\n    connection_string: "127.0.0.1:1"\n'
    )
    columns = {"zone_id": pa.int64(), "trips": pa.int64(), "fare": pa.float64()}
    table = {n: pa.array([], t) for n, t in columns.items()}
    table["event_timestamp"] = pa.array([], pa.timestamp("us", "UTC"))
    pq.write_table(pa.table(table), repo / "data" / "events.parquet")
    return apply_repo(repo)


def test_aggregations_compile_to_feast_names_types_and_tiles(plan: ServingPlan) -> None:
    view = plan.feature_views["plain"]
    assert view.aggregations == (
        WindowAggregation("sum_trips_60s", "trips", "sum", 60),
        WindowAggregation("avg_trips_900s", "trips", "mean", 900),
        WindowAggregation("top_fare", "fare", "max", 90),
    )
    assert [(f.name, f.dtype) for f in view.features] == [
        ("sum_trips_60s", "Int64"),  # an integer column's sum
        ("avg_trips_900s", "Float64"),
        ("top_fare", "Float32"),  # as the schema declares it
    ]
    assert [(c.name, c.dtype) for c in view.event_columns] == [
        ("trips", "Int64"),
        ("fare", "Float64"),  # not in the schema: a number
    ]
    assert view.hop_s == 10  # gcd(60, 900, 90, 10 s)
    assert view.push_source == "events"
    assert plan.unsupported_in(["plain"], SERVE) == []
    assert "twice" in plan.unsupported_in(["plain"], MATERIALIZE)[0].reason


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("odd_window", "a 45 s window over 10 s tiles"),
        ("unknown_function", 'Aggregation(function="std")'),
        ("integer_mean", "mean_trips_300s: Int64"),
    ],
)
def test_what_cannot_be_kept_is_refused_naming_it(plan: ServingPlan, name: str, says: str) -> None:
    with pytest.raises(PlanError, match="stream feature view") as refused:
        plan.feature_view(name)
    assert says in str(refused.value)


def test_a_service_reads_the_outputs_not_the_declared_event_columns(plan: ServingPlan) -> None:
    [projection] = plan.feature_service("service").projections
    # Feast's projection holds the schema's fields: the declared event column `trips` (left
    # out: no value of the view) and `top_fare`; outputs missing from the schema never get in
    assert projection.features == ("top_fare",)
