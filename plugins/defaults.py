"""Defaults every h3ops DAG shares: start date, retries, the `config` param."""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from airflow.sdk import Param


START = datetime(2026, 1, 1, tzinfo=timezone.utc)
DEFAULT_ARGS = {
    "owner": "h3ops",
    "retries": 1,
    # Two minutes unless H3OPS_RETRY_DELAY_S says otherwise (read at parse time; the stack test
    # sets a few seconds so a retried task finishes inside its budget).
    "retry_delay": timedelta(seconds=float(os.environ.get("H3OPS_RETRY_DELAY_S", "120"))),
    # A DPO or merge that runs past this is stuck, not slow: fail it and let the retry resume.
    "execution_timeout": timedelta(hours=12),
}


def config_param() -> Param:
    # No default here: a value fixed at parse time would hide the Variable (plugins/operators.py).
    return Param(None, type=["null", "string"],
                 description="pipeline YAML (path or s3:// URI); default: Variable h3ops_config, then $H3OPS_CONFIG")
