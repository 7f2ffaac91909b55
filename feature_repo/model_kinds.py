"""The model kinds trained on this repository: ETA (trip duration) and pricing (surge).

Each names its feature service, its label table and column, and the naive baselines it must
beat on the holdout. Pricing learns from `pricing_v2` (the zone's last 1, 5 and 15 minutes of
events beside the 5-minute snapshot) and is compared with the same learner on the batch-only
`pricing_v1` it replaces. `carrara train <kind>` reads `MODEL_KINDS`; Feast skips this file
(.feastignore).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from serving.repo.model_kinds import Baseline, Comparison, ModelKind

FALLBACK = "; the training mean where missing"


def _column(frame: pd.DataFrame, ref: str) -> np.ndarray:
    values: np.ndarray = frame[ref].to_numpy(np.float64, na_value=np.nan)
    return values


def route_average(frame: pd.DataFrame) -> np.ndarray:
    return _column(frame, "route_stats__avg_duration_s_7d")


def distance_over_speed(frame: pd.DataFrame) -> np.ndarray:
    km = _column(frame, "trip_geometry__haversine_km")
    kph = _column(frame, "driver_stats__avg_speed_kph_7d")
    with np.errstate(divide="ignore", invalid="ignore"):
        seconds = km * 1.25 / kph * 3600.0
    return np.where(np.isfinite(seconds) & (kph > 0), seconds, np.nan)


def last_surge(frame: pd.DataFrame) -> np.ndarray:
    return _column(frame, "zone_stats__surge_15m")


MODEL_KINDS = {
    "eta": ModelKind(
        name="eta",
        feature_service="eta_v1",
        label_table="data/trips.parquet",
        label="duration_s",
        baselines=(
            Baseline(
                "route_average", "the route's 7-day average duration" + FALLBACK, route_average
            ),
            Baseline(
                "distance_speed",
                "haversine km x 1.25 / driver's 7-day average speed" + FALLBACK,
                distance_over_speed,
            ),
        ),
    ),
    "pricing": ModelKind(
        name="pricing",
        feature_service="pricing_v2",
        label_table="data/surge_observations.parquet",
        label="surge_multiplier",
        baselines=(
            Baseline("last_surge", "the zone's last 15-minute surge" + FALLBACK, last_surge),
        ),
        compare_with=(Comparison("pricing_v1", "batch-only features"),),
    ),
}
