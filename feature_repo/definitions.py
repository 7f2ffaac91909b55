"""The ride-hailing feature repository: entities, feature views, on-demand views, services.

A plain Feast repository (`feast apply` works on it). Feature tables are Parquet files in
`data/`, written by `carrara sample-data`. On-demand logic lives in `transforms.py` (no Feast
import) so Carrara's server runs the very same functions online. Feast rebuilds a python-mode
on-demand function from its source text, so each body imports `transforms` itself; the folder
of this file must be on `sys.path` when Feast runs them (Carrara's commands see to that).

`zone_activity` is a stream feature view: sums of a zone's raw events (trip requests, drivers
becoming available) over the last 1, 5 and 15 minutes, kept online from pushed events (Push,
`carrara ingest`) and computed offline from the same events in its batch source.
"""

from datetime import timedelta
from typing import Any

from feast import (
    Entity,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    PushSource,
    RequestSource,
)
from feast.aggregation import Aggregation
from feast.on_demand_feature_view import on_demand_feature_view
from feast.stream_feature_view import StreamFeatureView
from feast.types import Float32, Float64, Int64, String
from feast.value_type import ValueType

driver = Entity(name="driver", join_keys=["driver_id"], value_type=ValueType.INT64)
zone = Entity(name="zone", join_keys=["zone_id"], value_type=ValueType.INT64)
pickup_zone = Entity(name="pickup_zone", join_keys=["pickup_zone_id"], value_type=ValueType.INT64)
dropoff_zone = Entity(
    name="dropoff_zone", join_keys=["dropoff_zone_id"], value_type=ValueType.INT64
)

driver_stats = FeatureView(
    name="driver_stats",
    entities=[driver],
    ttl=timedelta(hours=26),
    schema=[
        Field(name="driver_id", dtype=Int64),
        Field(name="acceptance_rate", dtype=Float32),
        Field(name="cancel_rate", dtype=Float32),
        Field(name="avg_rating", dtype=Float32),
        Field(name="trips_today", dtype=Int64),
        Field(name="online_minutes_today", dtype=Int64),
        Field(name="avg_speed_kph_7d", dtype=Float32),
        Field(name="vehicle_type", dtype=String),
    ],
    source=FileSource(
        name="driver_stats_source",
        path="data/driver_stats.parquet",
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
    ),
    description="Hourly driver snapshot.",
)

zone_stats = FeatureView(
    name="zone_stats",
    entities=[zone],
    ttl=timedelta(hours=1),
    schema=[
        Field(name="zone_id", dtype=Int64),
        Field(name="open_requests", dtype=Int64),
        Field(name="available_drivers", dtype=Int64),
        Field(name="demand_supply_ratio", dtype=Float64),
        Field(name="avg_pickup_wait_s", dtype=Float64),
        Field(name="surge_15m", dtype=Float64),
        Field(name="rain_mm", dtype=Float64),
        Field(name="traffic_index", dtype=Float64),
    ],
    source=FileSource(
        name="zone_stats_source",
        path="data/zone_stats.parquet",
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
    ),
    description="Zone supply and demand, every 5 minutes.",
)

route_stats = FeatureView(
    name="route_stats",
    entities=[pickup_zone, dropoff_zone],
    ttl=timedelta(days=3),
    schema=[
        Field(name="pickup_zone_id", dtype=Int64),
        Field(name="dropoff_zone_id", dtype=Int64),
        Field(name="avg_duration_s_7d", dtype=Float64),
        Field(name="p90_duration_s_7d", dtype=Float64),
        Field(name="trips_7d", dtype=Int64),
        Field(name="avg_distance_km", dtype=Float64),
    ],
    source=FileSource(
        name="route_stats_source",
        path="data/route_stats.parquet",
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
    ),
    description="Zone-to-zone trip statistics over the trailing 7 days, daily.",
)

zone_events = PushSource(
    name="zone_events",
    batch_source=FileSource(
        name="zone_events_source",
        path="data/zone_events.parquet",
        timestamp_field="event_timestamp",
    ),
    description="Raw zone events: one row per trip request or driver becoming available.",
)

# Feast's resolved names: sum_trip_requested_60s, ..., sum_driver_available_900s.
zone_activity_aggregations = [
    Aggregation(column=column, function="sum", time_window=timedelta(seconds=window_s))
    for column in ("trip_requested", "driver_available")
    for window_s in (60, 300, 900)
]

zone_activity = StreamFeatureView(
    name="zone_activity",
    entities=[zone],
    ttl=timedelta(minutes=30),
    source=zone_events,
    schema=[
        Field(name="zone_id", dtype=Int64),
        *(
            Field(name=a.resolved_name(a.time_window), dtype=Int64)
            for a in zone_activity_aggregations
        ),
    ],
    aggregations=zone_activity_aggregations,
    timestamp_field="event_timestamp",
    enable_tiling=True,
    tiling_hop_size=timedelta(seconds=10),
    description="A zone's trip requests and driver arrivals over the last 1, 5 and 15 minutes.",
)

trip_request = RequestSource(
    name="trip_request",
    schema=[
        Field(name="pickup_lat", dtype=Float64),
        Field(name="pickup_lon", dtype=Float64),
        Field(name="dropoff_lat", dtype=Float64),
        Field(name="dropoff_lon", dtype=Float64),
    ],
)

clock_request = RequestSource(
    name="clock_request",
    schema=[Field(name="request_ts_s", dtype=Int64)],
)


@on_demand_feature_view(
    sources=[trip_request],
    schema=[Field(name="haversine_km", dtype=Float64)],
    mode="python",
)
def trip_geometry(inputs: dict[str, Any]) -> dict[str, Any]:
    import transforms

    return {k: v.tolist() for k, v in transforms.trip_geometry(inputs).items()}


@on_demand_feature_view(
    sources=[clock_request],
    schema=[
        Field(name="hour_of_day", dtype=Int64),
        Field(name="day_of_week", dtype=Int64),
        Field(name="is_weekend", dtype=Int64),
    ],
    mode="python",
)
def request_time(inputs: dict[str, Any]) -> dict[str, Any]:
    import transforms

    return {k: v.tolist() for k, v in transforms.request_time(inputs).items()}


@on_demand_feature_view(
    sources=[zone_activity],
    schema=[
        Field(name="pressure_1m", dtype=Float64),
        Field(name="pressure_5m", dtype=Float64),
        Field(name="pressure_15m", dtype=Float64),
    ],
    mode="python",
)
def zone_pressure(inputs: dict[str, Any]) -> dict[str, Any]:
    import transforms

    return {k: v.tolist() for k, v in transforms.zone_pressure(inputs).items()}


pricing_v1 = FeatureService(
    name="pricing_v1",
    features=[zone_stats, request_time],
    description="Surge multiplier for a zone, now.",
)

# pricing_v1 with the zone's recent events; pricing_v1 (batch features only) stays, the
# comparison pricing models are measured against (model_kinds.py).
pricing_v2 = FeatureService(
    name="pricing_v2",
    features=[zone_stats, request_time, zone_activity, zone_pressure],
    description="Surge multiplier for a zone, now, with the zone's last 1, 5 and 15 minutes.",
)

# Projections are written inline: bound to a module-level name, Feast's repo scan would see a
# second view called `zone_stats` (ConflictingFeatureViewNames).
eta_v1 = FeatureService(
    name="eta_v1",
    features=[
        driver_stats,
        zone_stats.with_name("pickup_zone").with_join_key_map({"zone_id": "pickup_zone_id"}),
        zone_stats.with_name("dropoff_zone").with_join_key_map({"zone_id": "dropoff_zone_id"}),
        route_stats,
        trip_geometry,
        request_time,
    ],
    description="Trip duration in seconds.",
)
