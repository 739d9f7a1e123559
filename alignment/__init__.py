"""Preference data, DPO per dimension, continual DPO and data-mixture baselines.

Nothing here imports Airflow; torch/transformers/trl are imported inside the functions that train,
so validating and building datasets stays cheap.
"""
