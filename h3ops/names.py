"""The names every part of the stack agrees on: connections, pools, queues, buckets, variables.

The shared core's one vocabulary (no imports): the plugins and DAGs, the local stack, the compose
file, the Helm values and the pod templates all use these; the infra tests check the YAML files
against them, so a rename here shows up as a failing test there.
"""
from __future__ import annotations

# The paper's three dimensions, and the two combined ones Table 1 annotates datasets with; a project
# trains one DPO candidate per configured entry of ALL_DIMENSIONS; scores average over DIMENSIONS.
DIMENSIONS = ("helpfulness", "honesty", "harmlessness")
MIXES = ("helpfulness&honesty", "helpfulness&harmlessness")
ALL_DIMENSIONS = DIMENSIONS + MIXES

# What a registered model version is (tag h3ops.kind), and the registered model holding each kind:
# <project>-<suffix> (DESIGN: <name>-candidates, -continual, -merged; mixture: a data-mixture baseline).
MODEL_SUFFIX = {"candidate": "candidates", "continual": "continual", "merged": "merged", "base": "base",
                "mixture": "mixture"}
MODEL_KINDS = tuple(MODEL_SUFFIX)

# Airflow objects the DAGs and plugins look up.
MLFLOW_CONN_ID = "mlflow_default"   # conn_type http, host = tracking server URL
S3_CONN_ID = "aws_default"          # conn_type aws, login/password = keys, extra.endpoint_url
SERVING_CONN_ID = "h3ops_serving"  # conn_type http, host = `h3ops serve` URL, password = admin token
GPU_POOL = "gpu"                    # slots = GPUs, for local executors
GPU_QUEUE = "gpu"                   # Celery queue served by GPU workers
DEFAULT_QUEUE = "default"
# Where GPU tasks run when the deployment runs the KubernetesExecutor next to Celery (Helm): a pod
# from the GPU template, mounted at this path in the scheduler (infra/k8s/values.yaml).
KUBERNETES_EXECUTOR = "KubernetesExecutor"
GPU_POD_TEMPLATE = "/opt/airflow/pod_templates/gpu-task.yaml"

# The pipeline config a run uses when its conf names none: the Airflow Variable first (set it in the
# UI, with `airflow variables set`, or as AIRFLOW_VAR_H3OPS_CONFIG), then this environment variable,
# which the images, the compose file and the Helm values set to the config shipped in the image.
CONFIG_VARIABLE = "h3ops_config"
CONFIG_ENV = "H3OPS_CONFIG"
IMAGE_CONFIG = "/opt/h3ops/examples/stack.yaml"

# Artifact store.
ARTIFACT_BUCKET = "h3ops-artifacts"
MLFLOW_ARTIFACT_PREFIX = "mlflow"
LANDING_PREFIX = "landing"          # preference files dropped here (s3://<bucket>/landing/...)

# Environment variables read by MLflow / boto3 inside tasks and workers.
MLFLOW_ENV = ("MLFLOW_TRACKING_URI",)
S3_ENV = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")

# Airflow settings the platform relies on (low parallelism: see FACTS, 32 workers = 5.5 GiB).
AIRFLOW_BASE_ENV = {
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__PARALLELISM": "4",
}

# Local-stack defaults (loopback only; the keys protect nothing but typos).
LOCAL_S3_ACCESS_KEY = "h3ops"
LOCAL_S3_SECRET_KEY = "h3ops-local-secret"
LOCAL_REGION = "us-east-1"
DEFAULT_PORTS = {"s3": 9000, "mlflow": 5000, "airflow": 8080}

# Serving (compose service / Kubernetes Deployment+Service): the OpenAI-compatible endpoint.
SERVING_SERVICE = "serving"
SERVING_PORT = 8000
SERVING_HEALTH_PATH = "/health"
SERVING_HANDOFF_PATH = "/admin/reload"
PG_DB_PREFIX = "h3ops"               # --db postgres: databases h3ops_airflow and h3ops_mlflow
