"""Training: point-in-time training sets, LightGBM, holdout metrics against baselines.

training_set.py (labels joined to a feature service by Feast's historical retrieval) and
train.py (time split, fit, evaluate, register). What to train (a model kind: feature service,
label, baselines) is defined by the feature repository (serving/repo/model_kinds.py).
"""
