"""The sample ride-hailing world and the demo.

world.py (deterministic Parquet feature and label tables) and demo.py (the whole loop on a
private redis-server, through library calls, never the command line).
"""
