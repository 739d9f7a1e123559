"""Structural checks of the production stack files (compose, Kubernetes, Dockerfiles) and `make up`.

No docker engine or cluster exists here: these files are parsed and checked against what the
code expects (h3ops/names.py, the Airflow components, the GPU queue and pool), not run.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from h3ops import names

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
AIRFLOW_PARTS = {"airflow-api-server": "api-server", "airflow-scheduler": "scheduler",
                 "airflow-dag-processor": "dag-processor", "airflow-triggerer": "triggerer"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "compose" / "docker-compose.yml").read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    return dict(env) if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def _cmd(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return cmd.split() if isinstance(cmd, str) else [str(c) for c in cmd]


def test_compose_has_every_service_with_health_checks(compose):
    services = compose["services"]
    required = {"postgres", "redis", "s3", "mlflow", "airflow-init", *AIRFLOW_PARTS,
                "airflow-worker-cpu", "airflow-worker-gpu"}
    assert required <= set(services)
    for name in required - {"airflow-init"}:
        assert "healthcheck" in services[name], f"{name} has no health check"
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in compose["volumes"], f"{name} uses undeclared volume {src}"
            elif src.startswith("."):
                assert (INFRA / "compose" / src).exists(), f"{name} mounts missing {src}"


def test_compose_airflow_components_share_one_configuration(compose):
    services = compose["services"]
    airflow = {n: s for n, s in services.items() if n.startswith("airflow-")}
    envs = {n: _env(s) for n, s in airflow.items()}
    for key in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL",
                "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"):
        values = {env.get(key) for env in envs.values()}
        assert len(values) == 1 and None not in values, f"{key} differs or is missing: {values}"
    env = envs["airflow-scheduler"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert "@postgres:5432/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-api-server:8080/execution/"
    for name, part in AIRFLOW_PARTS.items():
        assert _cmd(services[name]) == [part]
    assert "8080:8080" in services["airflow-api-server"]["ports"]
    # The databases the URLs name are the ones the init script creates.
    init_sql = (INFRA / "compose" / "init-databases.sql").read_text()
    for url in (env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], _mlflow_flag(services["mlflow"], "--backend-store-uri")):
        db = url.rsplit("/", 1)[1]
        assert f"CREATE DATABASE {db};" in init_sql


def _mlflow_flag(svc: dict, flag: str) -> str:
    for arg in _cmd(svc):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"mlflow command lacks {flag}")


def test_compose_wiring_matches_names(compose):
    services = compose["services"]
    env = _env(services["airflow-worker-gpu"])
    # Connections the plugins look up, as AIRFLOW_CONN_* variables with valid JSON.
    mlflow_conn = json.loads(env[f"AIRFLOW_CONN_{names.MLFLOW_CONN_ID.upper()}"])
    assert mlflow_conn["conn_type"] == "http" and mlflow_conn["host"] == "http://mlflow"
    s3_conn = json.loads(env[f"AIRFLOW_CONN_{names.S3_CONN_ID.upper()}"])
    assert s3_conn["conn_type"] == "aws" and s3_conn["extra"]["bucket"] == names.ARTIFACT_BUCKET
    assert s3_conn["extra"]["endpoint_url"] == env["MLFLOW_S3_ENDPOINT_URL"] == "http://s3:9000"
    for var in (*names.MLFLOW_ENV, *names.S3_ENV):
        assert env.get(var), f"tasks need {var}"
    assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_conn['port']}"
    assert "5000:5000" in services["mlflow"]["ports"]
    # MLflow stores artifacts in the bucket the S3 service creates, with the same keys.
    dest = _mlflow_flag(services["mlflow"], "--artifacts-destination")
    assert dest == f"s3://{names.ARTIFACT_BUCKET}/{names.MLFLOW_ARTIFACT_PREFIX}"
    assert f"/data/{names.ARTIFACT_BUCKET}" in " ".join(_cmd(services["s3"]))
    assert _mlflow_flag(services["mlflow"], "--backend-store-uri").startswith("postgresql+psycopg2://")
    assert _env(services["mlflow"])["AWS_ACCESS_KEY_ID"] == env["AWS_ACCESS_KEY_ID"] == "${S3_ACCESS_KEY}"
    # The gpu pool is created by the init job.
    assert f"airflow pools set {names.GPU_POOL} " in " ".join(_cmd(services["airflow-init"]))
    # Every ${VAR} the file uses is documented in .env.example.
    documented = set(re.findall(r"^([A-Z0-9_]+)=", (INFRA / "compose" / ".env.example").read_text(), re.M))
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", (INFRA / "compose" / "docker-compose.yml").read_text()))
    assert used <= documented, f"undocumented variables: {used - documented}"


def test_compose_gpu_and_cpu_workers_serve_their_queues(compose):
    services = compose["services"]
    gpu, cpu = services["airflow-worker-gpu"], services["airflow-worker-cpu"]
    gcmd, ccmd = _cmd(gpu), _cmd(cpu)
    assert gcmd[:2] == ["celery", "worker"] and gcmd[gcmd.index("--queues") + 1] == names.GPU_QUEUE
    assert ccmd[ccmd.index("--queues") + 1] == names.DEFAULT_QUEUE
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "deploy" not in cpu or "reservations" not in cpu["deploy"].get("resources", {})
    assert gpu["build"]["dockerfile"] == "infra/docker/worker-gpu.Dockerfile"
    for svc in services.values():
        if "build" in svc:
            assert (INFRA / "compose" / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve().exists()


def test_k8s_gpu_pod_template_requests_gpus():
    pod = yaml.safe_load((INFRA / "k8s" / "pod-template-gpu.yaml").read_text())
    assert pod["kind"] == "Pod"
    (base,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]  # the executor's container
    assert base["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert base["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert base["image"].startswith("h3ops-worker-gpu")
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["spec"]["tolerations"])
    cpu = yaml.safe_load((INFRA / "k8s" / "pod-template-cpu.yaml").read_text())
    (cbase,) = cpu["spec"]["containers"]
    assert cbase["name"] == "base" and "nvidia.com/gpu" not in json.dumps(cbase["resources"])


def test_k8s_helm_values_and_mlflow_deployment():
    values = yaml.safe_load((INFRA / "k8s" / "values.yaml").read_text())
    assert values["airflowVersion"] == "3.3.2"
    assert set(values["executor"].split(",")) == {"CeleryExecutor", "KubernetesExecutor"}
    assert values["config"]["core"]["load_examples"] == "False"
    assert values["config"]["operators"]["default_queue"] == names.DEFAULT_QUEUE  # [operators], where Airflow reads it
    pod = yaml.safe_load(values["podTemplate"])
    assert pod["spec"]["containers"][0]["name"] == "base"
    assert values["volumeMounts"][0]["mountPath"].endswith("/gpu-task.yaml")
    assert "h3ops-airflow-env" in values["extraEnvFrom"]
    docs = list(yaml.safe_load_all((INFRA / "k8s" / "mlflow.yaml").read_text()))
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert f"--artifacts-destination=s3://{names.ARTIFACT_BUCKET}/{names.MLFLOW_ARTIFACT_PREFIX}" in container["args"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert service["spec"]["ports"][0]["port"] == 5000
    assert deploy["spec"]["selector"]["matchLabels"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()


def _healthcheck_url(svc: dict) -> str:
    test = svc["healthcheck"]["test"]
    return next(t for t in (test if isinstance(test, list) else [test]) if "http://" in str(t))


def test_compose_serving_follows_production_on_a_gpu(compose):
    """The serving service: `h3ops serve` with the vLLM engine, GPU, health check, and the hand-off
    connection the promote_to_serving DAG looks up (names from h3ops/names.py)."""
    services = compose["services"]
    svc = services[names.SERVING_SERVICE]
    cmd = _cmd(svc)
    assert cmd[0] == "serve" and cmd[cmd.index("--engine") + 1] == "vllm"
    assert cmd[cmd.index("--port") + 1] == str(names.SERVING_PORT) and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert f"{names.SERVING_PORT}:{names.SERVING_PORT}" in svc["ports"]
    assert _healthcheck_url(svc).endswith(f":{names.SERVING_PORT}{names.SERVING_HEALTH_PATH}")
    assert "start_period" in svc["healthcheck"]  # the first version loads before it is healthy
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    env = _env(svc)
    assert env["MLFLOW_TRACKING_URI"] == _env(services["airflow-worker-gpu"])["MLFLOW_TRACKING_URI"]
    for var in names.S3_ENV:
        assert env.get(var), f"serving downloads artifacts: it needs {var}"
    assert svc["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert svc["build"]["dockerfile"] == "infra/docker/serving.Dockerfile"
    # Airflow reaches it through the connection the DAG's hook reads, with the same admin token.
    conn = json.loads(_env(services["airflow-worker-cpu"])[f"AIRFLOW_CONN_{names.SERVING_CONN_ID.upper()}"])
    assert conn["conn_type"] == "http" and conn["host"] == f"http://{names.SERVING_SERVICE}"
    assert conn["port"] == names.SERVING_PORT and conn["password"] == env["H3OPS_SERVING_ADMIN_TOKEN"]


def test_k8s_serving_deployment_requests_a_gpu_and_probes_health():
    docs = list(yaml.safe_load_all((INFRA / "k8s" / "serving.yaml").read_text()))
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    assert deploy["metadata"]["name"] == service["metadata"]["name"] == names.SERVING_SERVICE
    spec = deploy["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["image"].startswith("h3ops-serving")
    assert c["args"][0] == "serve" and "--engine=vllm" in c["args"] and f"--port={names.SERVING_PORT}" in c["args"]
    assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    port = next(p for p in c["ports"] if p["name"] == "http")
    assert port["containerPort"] == names.SERVING_PORT
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": names.SERVING_HEALTH_PATH, "port": "http"}, probe
    env = {e["name"] for e in c.get("env", [])}
    assert {"MLFLOW_TRACKING_URI", "H3OPS_SERVING_ADMIN_TOKEN"} <= env
    assert service["spec"]["ports"][0]["port"] == names.SERVING_PORT
    assert deploy["spec"]["selector"]["matchLabels"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("name", ["airflow.Dockerfile", "worker-gpu.Dockerfile", "mlflow.Dockerfile",
                                  "serving.Dockerfile"])
def test_dockerfiles_install_with_the_project_constraints(name):
    text = (INFRA / "docker" / name).read_text()
    lines = [line.split("#")[0] for line in text.splitlines()]
    assert lines[0].startswith("FROM ") or any(line.startswith("FROM ") for line in lines)
    assert "constraints.txt" in text and re.search(r"pip install[^\n]*-c ", text)
    for copy in re.findall(r"^COPY (\S+)", text, re.M):
        assert (ROOT / copy).exists(), f"{name} copies missing {copy}"
    if name == "airflow.Dockerfile":
        assert "torch" not in re.sub(r"import torch", "", text.split("RUN pip install", 1)[1].split("\n")[0])
        assert '! python -c "import torch"' in text  # the scheduler image must not carry torch
    if name == "worker-gpu.Dockerfile":
        assert "download.pytorch.org/whl/cu" in text and "grep -v '^torch=='" in text


def test_make_up_passes_the_db_flag():
    # CI runs us inside `make test`: drop its MAKEFLAGS/MAKELEVEL so the nested make prints only ours.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}
    for args, expected in ((["DB=postgres"], "infra.local.stack up --db postgres"), ([], "infra.local.stack up")):
        done = subprocess.run(["make", "--no-print-directory", "-n", "up", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        lines = [line for line in done.stdout.splitlines() if "infra.local.stack up" in line]
        assert len(lines) == 1 and lines[0].rstrip().endswith(expected), done.stdout
    done = subprocess.run(["make", "--no-print-directory", "-n", "down"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "infra.local.stack down" in done.stdout


def test_serving_connection_of_the_stack_reads_as_the_hook_expects(compose, monkeypatch):
    """The compose file's h3ops_serving connection, read by the DAG's own hook: the URL and the token."""
    from plugins.hooks import ServingHook

    env = _env(compose["services"]["airflow-worker-cpu"])
    var = f"AIRFLOW_CONN_{names.SERVING_CONN_ID.upper()}"
    monkeypatch.setenv(var, env[var].replace("${SERVING_ADMIN_TOKEN}", "tok"))
    assert ServingHook().endpoint() == (f"http://{names.SERVING_SERVICE}:{names.SERVING_PORT}", "tok")
    monkeypatch.delenv(var)
    assert ServingHook().endpoint() == (None, None)  # no connection: the step falls back or skips
