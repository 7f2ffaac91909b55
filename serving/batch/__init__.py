"""Batch jobs: materialize, batch scoring, point-in-time joins, online/offline consistency.

materialize.py (Parquet sources -> latest row per entity -> guarded Redis writes),
parquet_source.py (the latest rows of a window, in bounded memory), score.py and
score_input.py (`carrara score`), point_in_time.py and offline_model.py (features as of each
row's own time, without Feast), consistency.py (a running server against the offline path).
"""
