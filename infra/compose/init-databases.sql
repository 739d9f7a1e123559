-- One PostgreSQL server, two metadata databases: Airflow's and MLflow's.
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
