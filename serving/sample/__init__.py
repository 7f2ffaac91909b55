"""The sample ride-hailing world and the demo.

world.py (deterministic Parquet feature and label tables) with zone_events.py (the raw zone
events behind the windowed features), demo.py (the whole loop on a private redis-server,
through library calls, never the command line) and live.py (its replay of the events through
a stream, and a burst).
"""
