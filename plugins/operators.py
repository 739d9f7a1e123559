"""How every h3ops task runs a step: find the run's pipeline config, then call the step in-process.

A GPU task is an ordinary `@task` placed on a GPU worker or pod by its executor settings
(plugins/placement.py): the whole task process runs there, so no separate step command is needed.

The config is found in one order everywhere: the run's conf `config`, then the Airflow Variable
`h3ops_config`, then the environment variable H3OPS_CONFIG (set by the images, the compose file and
the Helm values to the config shipped in the image). Each holds a path or an s3:// URI.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from h3ops.names import CONFIG_ENV, CONFIG_VARIABLE

MISSING_CONFIG = (f"no pipeline config for this run: set the Airflow Variable {CONFIG_VARIABLE!r} "
                  f"(Admin > Variables, `airflow variables set {CONFIG_VARIABLE} PATH_OR_S3_URI`, or "
                  f"AIRFLOW_VAR_{CONFIG_VARIABLE.upper()}), or the environment variable {CONFIG_ENV} "
                  f"on every Airflow component, or trigger the run with conf {{\"config\": ...}}")


def config_location(params: Mapping[str, Any] | None = None) -> str:
    """The run's config path or URI (conf, then Variable, then environment); ConfigError if none."""
    from airflow.sdk import Variable

    from h3ops.config import ConfigError

    location = ((params or {}).get("config") or Variable.get(CONFIG_VARIABLE, default=None)
                or os.environ.get(CONFIG_ENV))
    if not location:
        raise ConfigError(MISSING_CONFIG)
    return str(location)


def pipeline_config(params: Mapping[str, Any] | None = None, conn_id: str | None = None):
    """The run's PipelineConfig, with the MLflow connection applied on top."""
    from h3ops.config import load_config
    from plugins.hooks import MLflowHook

    cfg = load_config(config_location(params))
    overrides = (MLflowHook(conn_id) if conn_id else MLflowHook()).registry_overrides()
    return cfg.with_overrides(overrides) if overrides else cfg


def run_in_task(step: str, params: Mapping[str, Any] | None, **inputs: Any) -> Any:
    """What every h3ops task does: config from the run, then the step function in-process."""
    from h3ops.pipeline import run_step
    return run_step(step, pipeline_config(params), inputs)
