"""GPU pool placement of DPO tasks: one setting, `dpo.devices`, sizes both the launch and the slots.

A DPO task trains on `dpo.devices` GPUs (the step starts that many processes), so it must hold
that many slots of the `gpu` pool (slots = GPUs), or the pool would hand the same GPUs to two
tasks. Pool slots are fixed when the DAG file is parsed, while the config is chosen per run:
`dpo_task_args` reads the default config at parse time, and `run_dpo_in_task` refuses, with a
message naming both numbers, a run whose config asks for a different device count than the
task holds.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plugins.assets import GPU_POOL, GPU_QUEUE
from plugins.operators import DEFAULT_CONFIG, pipeline_config


def dpo_devices(config: str | None = None) -> int:
    """`dpo.devices` of the config a DAG is parsed with (1 when no config is there to read)."""
    from h3ops.config import load_config

    path = Path(config or DEFAULT_CONFIG)
    return load_config(path).dpo.devices if path.is_file() else 1


def dpo_task_args(config: str | None = None) -> dict[str, Any]:
    """`@task(**dpo_task_args())`: the GPU pool and queue, one pool slot per training device."""
    return {"pool": GPU_POOL, "queue": GPU_QUEUE, "pool_slots": dpo_devices(config)}


def check_slots(devices: int, pool_slots: int, config: str) -> None:
    if devices != pool_slots:
        raise ValueError(f"{config}: dpo.devices is {devices} but this task holds {pool_slots} slot(s) of pool "
                         f"{GPU_POOL!r}; parse the DAG with this config (H3OPS_CONFIG) so slots and GPUs agree")


def run_dpo_in_task(step: str, params: Mapping[str, Any] | None, **inputs: Any) -> Any:
    """run_in_task for a DPO step, after checking the task's pool slots match `dpo.devices`."""
    from airflow.sdk import get_current_context

    from h3ops.pipeline import run_step

    cfg = pipeline_config(params)
    ti = get_current_context()["ti"]
    check_slots(cfg.dpo.devices, ti.task.pool_slots, (params or {}).get("config") or DEFAULT_CONFIG)
    return run_step(step, cfg, inputs)
