"""The Feast repository, read once: definitions compiled into a serving plan.

The only subpackage that imports Feast at run time (lazily: `import feast` costs seconds), and
only in `compile.py` (apply, compile) and `historical.py` (point-in-time retrieval through
Feast). Everything else reads the plain `ServingPlan` (plan.py). Also here: Feast's registry
file amended without Feast (feast_registry.py), the repo's on-demand functions (on_demand.py),
model kinds (model_kinds.py) and what a windowed aggregation holds, online and offline
(windows.py: the definition, and its point-in-time computation from raw events). Imports only
`serving.errors` and the standard helpers.
"""
