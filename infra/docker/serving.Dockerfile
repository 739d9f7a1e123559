# Serving image: vLLM's OpenAI server (the engine, one process per model version) behind
# `h3ops serve --engine vllm` (the front: OpenAI contract, follows the production alias, verifies
# digests, switches atomically). Build from the repository root:
#   docker build -f infra/docker/serving.Dockerfile -t h3ops-serving .
# Run with the NVIDIA container toolkit (compose: a device reservation; Kubernetes: nvidia.com/gpu).
# vLLM pins its own CUDA torch and transformers: the base image's versions win for those; every
# other package h3ops needs is installed with the project's pins.
ARG VLLM_VERSION=v0.33.0
FROM vllm/vllm-openai:${VLLM_VERSION}

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
RUN apt-get update && apt-get install -y --no-install-recommends curl tini \
    && rm -rf /var/lib/apt/lists/* && useradd --create-home --uid 50002 --home-dir /opt/serving serving

WORKDIR /opt/h3ops
COPY pyproject.toml constraints.txt README.md ./
RUN grep -v -E '^(torch|torchvision|torchaudio|transformers|tokenizers|safetensors|triton|xformers|numpy)==' \
        constraints.txt > /tmp/constraints-serving.txt \
    && pip install -c /tmp/constraints-serving.txt mlflow-skinny boto3 fastapi uvicorn pydantic pyyaml
COPY h3ops ./h3ops
COPY registry ./registry
COPY serving ./serving
# The package itself without its dependency list (vLLM's torch stays); the import check proves
# the serving path needs nothing more.
RUN pip install --no-deps . \
    && python -c "import serving.cli, serving.proxy_engine, registry.api, mlflow, vllm"

USER serving
WORKDIR /opt/serving
ENV H3OPS_SERVING_CACHE=/cache/serving
EXPOSE 8000
ENTRYPOINT ["/usr/bin/tini", "--", "h3ops"]
CMD ["serve", "--engine", "vllm", "--host", "0.0.0.0", "--port", "8000"]
