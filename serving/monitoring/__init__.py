"""Watching what is served: the prediction log, live accuracy, drift and its report.

prediction_log.py (the request path's side: records handed to a bounded queue, drained by a
thread of its own; imports no pyarrow), parquet_log.py (that thread's Parquet writer, hourly
partitions, retention), drift.py (training distributions, PSI, the served rolling windows),
logged.py (reading a prediction log back), evaluate.py (logged predictions joined with
outcomes: live error per version and hour), report.py (the drift report: HTML with a
picture per feature, and a one-screen text summary).

A layer below online, batch and training (the server feeds the log, training records the
distributions) and above models (cards): it imports models, errors and files, never online.
prediction_log.py and drift.py are on the server's side and import no pandas or pyarrow;
parquet_log.py imports pyarrow and is built by the server only when a log is asked for;
logged.py, evaluate.py and report.py serve the `evaluate` and `monitor` commands.
"""
