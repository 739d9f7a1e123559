# Airflow scheduler / api-server / dag-processor / triggerer / CPU Celery worker image (no torch).
# Build from the repository root:  docker build -f infra/docker/airflow.Dockerfile -t h3ops-airflow .
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    AIRFLOW_HOME=/opt/airflow
RUN apt-get update && apt-get install -y --no-install-recommends curl libpq5 tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 50000 --home-dir /opt/airflow airflow

WORKDIR /opt/h3ops
COPY pyproject.toml constraints.txt README.md ./
COPY h3ops ./h3ops
COPY alignment ./alignment
COPY merging ./merging
COPY evaluation ./evaluation
COPY registry ./registry
COPY plugins ./plugins
COPY dags ./dags
COPY infra ./infra
# The pipeline config runs use when neither their conf nor the Variable h3ops_config names one.
COPY examples ./examples
# The project's constraints pin every version; the scheduler side needs Airflow, the Celery
# provider, boto3 and the MLflow client (mlflow-skinny), never torch.
RUN pip install -c constraints.txt ".[airflow,s3]" "mlflow-skinny" \
    && python -c "import airflow, celery, mlflow, boto3" \
    && ! python -c "import torch" 2>/dev/null

USER airflow
WORKDIR /opt/airflow
ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/h3ops/dags AIRFLOW__CORE__PLUGINS_FOLDER=/opt/h3ops/plugins \
    H3OPS_CONFIG=/opt/h3ops/examples/stack.yaml \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
ENTRYPOINT ["/usr/bin/tini", "--", "airflow"]
CMD ["version"]
