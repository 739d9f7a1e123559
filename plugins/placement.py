"""Where a GPU task runs: the one helper every GPU task in dags/ uses, `@task(**gpu_task_args())`.

- pool `gpu`, `slots` slots of it (slots = GPUs, so two tasks never get the same GPU), on every
  executor;
- queue `gpu`: the CeleryExecutor hands the task to the GPU workers (compose: airflow-worker-gpu);
- where the deployment also runs the KubernetesExecutor (Helm: "CeleryExecutor,KubernetesExecutor"),
  that executor, with the GPU pod template (one NVIDIA GPU, the GPU image): the Celery workers
  there serve only the default queue, and GPU nodes scale to zero between tasks.

The executors are read from Airflow's own configuration when the DAG file is parsed (the
dag-processor has the deployment's configuration), so one DAG file places its GPU tasks right on
every stack; naming an executor the deployment does not run would fail the DAG import.
"""
from __future__ import annotations

from typing import Any

from h3ops import names


def configured_executors() -> list[str]:
    """The executor names `[core] executor` lists (aliases as written: `alias:module.Class`)."""
    from airflow.configuration import conf

    return [e.strip() for e in conf.get("core", "executor", fallback="").split(",") if e.strip()]


def gpu_executor(executors: list[str] | None = None) -> str | None:
    """The name to give `executor=` for GPU tasks: the configured KubernetesExecutor, if any."""
    for entry in configured_executors() if executors is None else executors:
        alias, _, path = entry.rpartition(":")
        if path.rsplit(".", 1)[-1] == names.KUBERNETES_EXECUTOR:
            return alias or path
    return None


def gpu_task_args(slots: int = 1, executors: list[str] | None = None) -> dict[str, Any]:
    """Keyword arguments for a GPU `@task`: pool, pool slots, queue and, on Kubernetes, the executor
    and its GPU pod template."""
    if slots < 1:
        raise ValueError(f"a GPU task holds at least one slot of pool {names.GPU_POOL!r}, got {slots}")
    args: dict[str, Any] = {"pool": names.GPU_POOL, "pool_slots": slots, "queue": names.GPU_QUEUE}
    executor = gpu_executor(executors)
    if executor:
        args["executor"] = executor
        args["executor_config"] = {"pod_template_file": names.GPU_POD_TEMPLATE}
    return args
