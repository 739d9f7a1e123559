"""Airflow glue for h3ops: hooks (connections), operators and sensors (thin wrappers over
h3ops.steps), asset definitions and pool names. No domain logic lives here, and nothing here
imports torch, transformers, trl or MLflow at import time (DAG files import this package)."""
