"""h3ops: continual 3H alignment with Airflow and MLflow."""

__version__ = "0.1.0"
