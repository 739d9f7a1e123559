# MLflow tracking server and registry: PostgreSQL backend, artifacts proxied to S3.
# Build from the repository root:  docker build -f infra/docker/mlflow.Dockerfile -t h3ops-mlflow .
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends curl tini \
    && rm -rf /var/lib/apt/lists/* && useradd --create-home --uid 50001 mlflow
COPY constraints.txt /tmp/constraints.txt
RUN pip install -c /tmp/constraints.txt mlflow psycopg2-binary boto3 \
    && python -c "import mlflow, psycopg2, boto3"
USER mlflow
EXPOSE 5000
ENTRYPOINT ["/usr/bin/tini", "--", "mlflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]
