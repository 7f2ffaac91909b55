"""A model version resolved for scoring, shared by the online service and batch jobs.

served_model.py (read the features, add on-demand ones, score) and on_demand_steps.py (where
on-demand outputs land in the model's input). Sits below `online` and `batch` so both run the
same steps; imports `models`, `store` and `repo`, never gRPC, Feast, pandas or pyarrow.
"""
