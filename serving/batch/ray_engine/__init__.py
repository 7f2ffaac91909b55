"""The batch commands on a Ray cluster (`--engine ray`): materialize, score and training-set
retrieval, each running the local engine's own functions in Ray tasks.

The only subpackage that imports `ray` (an optional extra: `pip install 'carrara[ray]'`), and
only inside its functions' modules: importing this package imports no Ray. `session.py`
connects by address, `tracking.py` follows tasks (progress, stage times, errors),
`materialize.py`, `score.py` and `training.py` hold the three engines, `local_cluster.py` a
private cluster on loopback for the tests and benchmarks.
"""
