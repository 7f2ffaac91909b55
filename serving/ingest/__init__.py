"""Fresh features: rows that arrive between batch jobs.

push.py: rows for a Feast push source, written to every feature view it feeds, online (the
same guarded write as materialize: never over newer data) and/or offline (appended to the
view's Parquet batch source), as Feast's `store.push` does. windows.py: the rows a windowed
view (a stream feature view with aggregations) takes as events, applied to its tiles in Redis
(serving/store/window_tiles.py), and the ticks that age quiet windows. stream.py: `carrara
ingest`, a Redis Stream read by a consumer group into the pushes; metrics.py its counters.

Imports: store, repo, errors (below it); the server (online/) and the command line use it.
It encodes with pyarrow, so the request path's import contract lets only the servicer's
Push import it.
"""
