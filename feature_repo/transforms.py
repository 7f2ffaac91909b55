"""On-demand transforms: plain, vectorised functions over columns, with no Feast import.

One function serves both worlds: Feast's python-mode on-demand feature views (in
`definitions.py`) call it offline, and Carrara's server calls it online on numpy columns.
Each takes a mapping of input column -> sequence and returns a mapping of output -> numpy
array of the same length. Times are UTC.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

EARTH_RADIUS_KM = 6371.0088
SECONDS_PER_DAY = 86_400


def trip_geometry(inputs: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
    """Great-circle (haversine) distance between pickup and dropoff, in km."""
    lat1 = np.radians(np.asarray(inputs["pickup_lat"], dtype=np.float64))
    lon1 = np.radians(np.asarray(inputs["pickup_lon"], dtype=np.float64))
    lat2 = np.radians(np.asarray(inputs["dropoff_lat"], dtype=np.float64))
    lon2 = np.radians(np.asarray(inputs["dropoff_lon"], dtype=np.float64))
    a = (
        np.sin((lat2 - lat1) / 2.0) ** 2
        + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2.0) ** 2
    )
    distance_km = 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    return {"haversine_km": distance_km}


def request_time(inputs: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
    """Hour of day, day of week (Monday = 0) and a weekend flag from epoch seconds (UTC)."""
    seconds = np.asarray(inputs["request_ts_s"], dtype=np.int64)
    days = np.floor_divide(seconds, SECONDS_PER_DAY)
    hour_of_day = np.floor_divide(np.mod(seconds, SECONDS_PER_DAY), 3600)
    day_of_week = np.mod(days + 3, 7)  # 1970-01-01 was a Thursday (3)
    return {
        "hour_of_day": hour_of_day,
        "day_of_week": day_of_week,
        "is_weekend": (day_of_week >= 5).astype(np.int64),
    }


PRESSURE_WINDOWS = (("1m", 60), ("5m", 300), ("15m", 900))


def zone_pressure(inputs: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
    """Trip requests per available driver over each window: trips / (drivers + 1).

    The + 1 keeps a quiet zone finite (no driver arrived: the pressure is the trip count). A
    missing window (no value for the zone) gives NaN, which LightGBM takes as missing.
    """
    out = {}
    for suffix, window_s in PRESSURE_WINDOWS:
        trips = np.asarray(inputs[f"sum_trip_requested_{window_s}s"], dtype=np.float64)
        drivers = np.asarray(inputs[f"sum_driver_available_{window_s}s"], dtype=np.float64)
        out[f"pressure_{suffix}"] = trips / (drivers + 1.0)
    return out
