"""The online store: Feast's Redis bytes, one round trip per read, guarded writes.

codec.py (Feast's exact bytes: names, keys, decoding; no pyarrow) and encoding.py (whole
columns encoded for writes), read_plan.py (what a read needs, resolved at start-up), reads.py
(the request path's one pipelined round trip), writes.py and write_guard.py (Feast's
newer-than-stored rule, atomically), connection.py (the only module that opens connections to
the online store) and per_thread.py (one read link per thread), settings.py (which Redis,
secrets redacted), online_store.py (the object the rest of Carrara holds), window_tiles.py
(the script that keeps windowed views' tiles and values, exactly once per stream entry),
presence.py (is a
view in Redis at all: a sampled look), redis_process.py (a private redis-server for the demo,
benchmarks and tests). Imports `serving.repo.plan` and nothing above it: no gRPC, no Feast,
no pandas.
"""
