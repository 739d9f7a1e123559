"""GPU pool slots of DPO tasks: one setting, `dpo.devices`, sizes both the launch and the slots.

A DPO task trains on `dpo.devices` GPUs (the step starts that many processes), so it must hold
that many slots of the `gpu` pool (slots = GPUs), or the pool would hand the same GPUs to two
tasks. Pool slots are fixed when the DAG file is parsed, while the config is chosen per run:
`dpo_task_args` reads the deployment's config ($H3OPS_CONFIG) at parse time and places the task
with the one GPU helper (plugins/placement.py), and `run_dpo_in_task` refuses, with a message
naming both numbers, a run whose config asks for a different device count than the task holds.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from h3ops.names import CONFIG_ENV, GPU_POOL
from plugins.operators import config_location, pipeline_config
from plugins.placement import gpu_task_args


def dpo_devices(config: str | None = None) -> int:
    """`dpo.devices` of the config the DAG is parsed with: `config`, else $H3OPS_CONFIG (1 when no
    local file is there to read: the Variable and s3:// configs are read by runs, not by parsing)."""
    from h3ops.config import load_config

    location = config or os.environ.get(CONFIG_ENV)
    return load_config(location).dpo.devices if location and Path(location).is_file() else 1


def dpo_task_args(config: str | None = None) -> dict[str, Any]:
    """`@task(**dpo_task_args())`: a GPU task holding one pool slot per training device."""
    return gpu_task_args(slots=dpo_devices(config))


def check_slots(devices: int, pool_slots: int, config: str) -> None:
    if devices != pool_slots:
        raise ValueError(f"{config}: dpo.devices is {devices} but this task holds {pool_slots} slot(s) of pool "
                         f"{GPU_POOL!r}; parse the DAG with this config ({CONFIG_ENV}) so slots and GPUs agree")


def run_dpo_in_task(step: str, params: Mapping[str, Any] | None, **inputs: Any) -> Any:
    """run_in_task for a DPO step, after checking the task's pool slots match `dpo.devices`."""
    from airflow.sdk import get_current_context

    from h3ops.pipeline import run_step

    cfg = pipeline_config(params)
    ti = get_current_context()["ti"]
    check_slots(cfg.dpo.devices, ti.task.pool_slots, config_location(params))
    return run_step(step, cfg, inputs)
