"""Operators: run one h3ops step in the task's process, or as the same `h3ops step` command.

`StepOperator` is the whole bridge: it loads the pipeline config named by the DAG run's params,
applies the MLflow connection, calls `h3ops.steps.<name>` and returns its small JSON result as
XCom. GPU steps get `pool=GPU_POOL` (local executors) and `queue=GPU_QUEUE` (Celery) from the DAG.
"""
from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator

DEFAULT_CONFIG = os.environ.get("H3OPS_CONFIG", "examples/smollm2.yaml")


def pipeline_config(params: Mapping[str, Any] | None = None, conn_id: str | None = None):
    """The run's PipelineConfig: params['config'] (a path), then the MLflow connection on top."""
    from h3ops.config import load_config
    from plugins.hooks import MLflowHook

    params = params or {}
    cfg = load_config(params.get("config") or DEFAULT_CONFIG)
    overrides = (MLflowHook(conn_id) if conn_id else MLflowHook()).registry_overrides()
    return cfg.with_overrides(overrides) if overrides else cfg


def run_in_task(step: str, params: Mapping[str, Any] | None, **inputs: Any) -> Any:
    """What every h3ops task does: config from the run, then the step function in-process."""
    from h3ops.pipeline import run_step
    return run_step(step, pipeline_config(params), inputs)


def step_command(step: str, config: str, inputs: Mapping[str, Any]) -> list[str]:
    """The CLI twin of a task: the argv a Celery worker, a pod or a shell runs."""
    return ["h3ops", "step", step, "--config", config, "--inputs", json.dumps(dict(inputs), sort_keys=True)]


class StepOperator(BaseOperator):
    """Run `h3ops.steps.<step>(config, **inputs)`; `inputs` is templated (XCom pulls work)."""

    template_fields: Sequence[str] = ("inputs", "config")
    ui_color = "#e8f0ff"

    def __init__(self, *, step: str, inputs: dict[str, Any] | None = None, config: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.inputs = inputs or {}
        self.config = config

    def execute(self, context) -> Any:
        params = dict(context.get("params") or {})
        if self.config:
            params["config"] = self.config
        self.log.info("h3ops step %s: %s", self.step, shlex.join(
            step_command(self.step, params.get("config") or DEFAULT_CONFIG, self.inputs)))
        return run_in_task(self.step, params, **self.inputs)
