"""The model registry: versions on disk, cards, aliases, and the scorer.

registry.py (versions, atomic registration, loading), card.py (model.json: what a version was
trained on and what a caller sends), aliases.py (alias -> version, with history), scorer.py
(a float64 matrix in the model's feature order -> exact LightGBM scores), verification.py
(lignum proven equal to LightGBM at every split, else LightGBM; the verdict kept in the card),
with trees.py (LightGBM's trees and its split rule) and split_inputs.py (rows that reach every
split). Imports `repo` for the plan a card is checked against; never the store, gRPC or Feast.
"""
