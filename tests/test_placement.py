"""GPU tasks land on GPU workers on every shipped stack: the DAGs as each deployment's
dag-processor renders them (its executor configuration), checked against the compose services and
the Helm values that are supposed to run them.

The DAG files are parsed in a fresh interpreter per deployment, with that deployment's
`[core] executor` and `[operators] default_queue`, exactly as its dag-processor would.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from h3ops import names

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
IMAGE_ROOT = Path("/opt/h3ops")  # where the images hold this repository (infra/docker/*.Dockerfile)
# The tasks that need a GPU (training, merging, evaluating a model); each must be placed as one.
GPU_TASKS = {("continual_alignment", "train"), ("continual_alignment", "merge"),
             ("continual_alignment", "evaluate"), ("continual_dpo_baseline", "continual"),
             ("continual_dpo_baseline", "evaluate"), ("merge_benchmark", "merge_and_evaluate"),
             ("merge_benchmark", "train_mixture"), ("merge_benchmark", "evaluate_mixture")}

_RENDER = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
tasks = [{"dag": d.dag_id, "task": t.task_id, "pool": t.pool, "pool_slots": t.pool_slots, "queue": t.queue,
          "executor": t.executor, "executor_config": t.executor_config}
         for d in bag.dags.values() for t in d.tasks]
print("@@" + json.dumps({"errors": {k: str(v)[-800:] for k, v in bag.import_errors.items()}, "tasks": tasks}))
"""


def render(executor: str, default_queue: str = "default", config: str | None = None) -> list[dict]:
    """The DAGs' tasks as a dag-processor with these settings renders them; `config` is the
    deployment's H3OPS_CONFIG (a path in the images: read from this checkout)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AIRFLOW__CORE__EXECUTOR": executor,
           "AIRFLOW__OPERATORS__DEFAULT_QUEUE": default_queue}
    env.pop("H3OPS_CONFIG", None)
    if config:
        env["H3OPS_CONFIG"] = str(ROOT / Path(config).relative_to(IMAGE_ROOT))
    out = subprocess.run([sys.executable, "-c", _RENDER, str(ROOT / "dags")], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.split("@@", 1)[1])
    assert report["errors"] == {}, report["errors"]
    return report["tasks"]


def _gpu(tasks: list[dict]) -> list[dict]:
    gpu = [t for t in tasks if t["pool"] == names.GPU_POOL]
    assert GPU_TASKS <= {(t["dag"], t["task"]) for t in gpu}, "a GPU task is not in the gpu pool"
    return gpu


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "compose" / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((INFRA / "k8s" / "values.yaml").read_text())


def _queues(service: dict) -> set[str]:
    cmd = service.get("command") or []
    return set(cmd[cmd.index("--queues") + 1].split(",")) if "--queues" in cmd else set()


def test_compose_runs_every_task_on_a_worker_that_consumes_its_queue(compose):
    services = compose["services"]
    env = compose["x-airflow-env"]
    tasks = render(env["AIRFLOW__CORE__EXECUTOR"], env.get("AIRFLOW__OPERATORS__DEFAULT_QUEUE", "default"))
    consumers = {name: _queues(s) for name, s in services.items() if _queues(s)}
    for t in tasks:
        assert t["executor"] in (None, *env["AIRFLOW__CORE__EXECUTOR"].split(",")), t
        assert any(t["queue"] in q for q in consumers.values()), f"no compose worker consumes {t}"
    for t in _gpu(tasks):
        assert t["queue"] == names.GPU_QUEUE, t
        for name, queues in consumers.items():
            if t["queue"] in queues:  # only GPU workers take GPU tasks
                svc = services[name]
                assert "worker-gpu" in svc["image"], (name, t)
                devices = svc["deploy"]["resources"]["reservations"]["devices"]
                assert any("gpu" in d["capabilities"] for d in devices), name
    # The pools the tasks use exist: the init job creates them.
    init = " ".join(services["airflow-init"]["command"])
    for pool in {t["pool"] for t in tasks} - {"default_pool"}:
        assert f"airflow pools set {pool} " in init, pool


def test_helm_sends_gpu_tasks_to_gpu_pods_and_cpu_tasks_to_its_celery_workers(values):
    executors = [e.strip() for e in values["executor"].split(",")]
    default_queue = values["config"].get("operators", {}).get("default_queue", "default")
    tasks = render(values["executor"], default_queue)
    for t in tasks:
        assert t["executor"] in (None, *executors), t
        if t["executor"] is None:  # the first executor, Celery: the workers consume the default queue
            assert executors[0] == "CeleryExecutor" and t["queue"] == default_queue, t
    mounts = {m["mountPath"]: m for m in values["volumeMounts"]}
    for t in _gpu(tasks):
        assert t["executor"] == names.KUBERNETES_EXECUTOR, f"GPU task left to the Celery workers: {t}"
        template = t["executor_config"]["pod_template_file"]
        assert template in mounts, f"{template} is not mounted in the scheduler (values volumeMounts)"
        assert mounts[template]["subPath"] == Path(template).name
    # The mounted template is the GPU one: a GPU per pod, the GPU image, the container Airflow fills.
    pod = yaml.safe_load((INFRA / "k8s" / "pod-template-gpu.yaml").read_text())
    container = pod["spec"]["containers"][0]
    assert container["name"] == "base" and "worker-gpu" in container["image"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert f"gpu-task.yaml=infra/k8s/pod-template-gpu.yaml" in (INFRA / "k8s" / "values.yaml").read_text()
    # The pool exists: test_helm_creates_the_gpu_pool_with_the_slots_its_gpu_tasks_hold.


def test_the_local_stack_keeps_gpu_tasks_on_its_own_executor():
    """`h3ops up` runs the LocalExecutor: GPU tasks are limited by the pool, no other executor named."""
    text = (INFRA / "local" / "stack.py").read_text()
    assert '"AIRFLOW__CORE__EXECUTOR": "LocalExecutor"' in text
    for t in _gpu(render("LocalExecutor")):
        assert t["executor"] is None and t["executor_config"] == {}, t


def test_gpu_task_args_names_only_executors_the_deployment_runs():
    from plugins.placement import gpu_task_args

    assert gpu_task_args(executors=["CeleryExecutor"]) == {
        "pool": names.GPU_POOL, "pool_slots": 1, "queue": names.GPU_QUEUE}
    k8s = gpu_task_args(2, executors=["CeleryExecutor", "gpu:airflow.providers.cncf.kubernetes.executors."
                                                       "kubernetes_executor.KubernetesExecutor"])
    assert k8s["executor"] == "gpu" and k8s["pool_slots"] == 2  # an alias is how the task must name it
    assert k8s["executor_config"] == {"pod_template_file": names.GPU_POD_TEMPLATE}
    with pytest.raises(ValueError, match="at least one slot"):
        gpu_task_args(0)


def _pool_command(script: str) -> list[str]:
    return shlex.split(script[script.index("airflow pools set"):])


def test_helm_creates_the_gpu_pool_with_the_slots_its_gpu_tasks_hold(values, compose):
    """The chart's migration job creates the `gpu` pool by compose's own command and variable, and
    the slots it gets can run every GPU task of the DAGs as Helm renders them (a task holding more
    slots than its pool has never starts)."""
    job = values["migrateDatabaseJob"]
    assert job.get("enabled", True) and job.get("applyCustomEnv", True)  # the job gets `env` below
    assert job["args"][:2] == ["bash", "-c"], job["args"]
    script = job["args"][2]
    assert script.startswith("airflow db migrate &&") and "{{" not in script  # the chart tpl's args
    init = " ".join(compose["services"]["airflow-init"]["command"]).replace("$$", "$")
    command = _pool_command(script)
    assert command == _pool_command(init), "Helm and compose create the gpu pool differently"
    assert command[:5] == ["airflow", "pools", "set", names.GPU_POOL, "${GPU_SLOTS:-1}"], command

    env = {e["name"]: e["value"] for e in values["env"]}
    slots = int(env["GPU_SLOTS"])
    tasks = render(values["executor"], values["config"]["operators"]["default_queue"], env["H3OPS_CONFIG"])
    need = max(t["pool_slots"] for t in _gpu(tasks))
    assert slots >= need, f"Helm's gpu pool gets {slots} slot(s); a GPU task holds {need}"
    # Compose: the same variable, its default documented in .env.example.
    example = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", (INFRA / "compose" / ".env.example").read_text(), re.M))
    assert compose["services"]["airflow-init"]["environment"]["GPU_SLOTS"] == "${GPU_SLOTS:-1}"
    compose_config = compose["x-airflow-env"]["H3OPS_CONFIG"].split(":-", 1)[1].rstrip("}")
    compose_tasks = render(compose["x-airflow-env"]["AIRFLOW__CORE__EXECUTOR"], config=compose_config)
    assert int(example["GPU_SLOTS"]) >= max(t["pool_slots"] for t in _gpu(compose_tasks))
