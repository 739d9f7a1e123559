"""Hooks: connections → clients. Configuration wins only where no connection is defined.

- `MLflowHook` (conn `mlflow_default`): host is the tracking URI; extra may hold `registry_uri`,
  `artifact_location`, and S3 settings for the artifact store.
- `ServingHook` (conn `h3ops_serving`): host is the `h3ops serve` URL, password its admin token.
- `LandingHook` (conn `aws_default`, extra endpoint_url): an S3-compatible endpoint for `s3://` landing locations;
  extra `endpoint_url`, `region_name`; login/password are the access key pair.
"""
from __future__ import annotations

import os
from typing import Any

from airflow.sdk import BaseHook

from h3ops.names import MLFLOW_CONN_ID, SERVING_CONN_ID
from h3ops.names import S3_CONN_ID as LANDING_CONN_ID


def _connection(conn_id: str):
    """The connection, or None when it is not defined (the embedded default has none)."""
    try:
        return BaseHook.get_connection(conn_id)
    except Exception:  # AirflowNotFoundException, or no metadata DB at all
        return None


class MLflowHook(BaseHook):
    conn_name_attr = "mlflow_conn_id"
    default_conn_name = MLFLOW_CONN_ID
    conn_type = "mlflow"
    hook_name = "MLflow (h3ops registry)"

    def __init__(self, mlflow_conn_id: str = MLFLOW_CONN_ID) -> None:
        super().__init__()
        self.mlflow_conn_id = mlflow_conn_id

    def registry_overrides(self) -> dict[str, Any]:
        """Config overrides ({'registry': {...}}) from the connection; {} if it is absent."""
        conn = _connection(self.mlflow_conn_id)
        if conn is None or not conn.host:
            return {}
        uri = conn.host if "://" in conn.host else f"http://{conn.host}"
        if conn.port and uri.count(":") < 2:
            uri = f"{uri}:{conn.port}"
        extra = conn.extra_dejson or {}
        out: dict[str, Any] = {"tracking_uri": uri}
        for key in ("registry_uri", "artifact_location"):
            if extra.get(key):
                out[key] = extra[key]
        # S3 artifact stores: MLflow's own client reads these variables.
        if extra.get("s3_endpoint_url"):
            os.environ["MLFLOW_S3_ENDPOINT_URL"] = extra["s3_endpoint_url"]
        return {"registry": out}

    def get_conn(self, cfg):
        """A registry.api.Registry for the config, with this connection applied."""
        from h3ops.steps.common import registry
        overrides = self.registry_overrides()
        return registry(cfg.with_overrides(overrides) if overrides else cfg)


class LandingHook(BaseHook):
    conn_name_attr = "landing_conn_id"
    default_conn_name = LANDING_CONN_ID
    conn_type = "aws"
    hook_name = "h3ops landing (S3-compatible)"

    def __init__(self, landing_conn_id: str = LANDING_CONN_ID) -> None:
        super().__init__()
        self.landing_conn_id = landing_conn_id

    def get_conn(self):
        """A boto3 S3 client, or None to use boto3's default chain (environment variables)."""
        conn = _connection(self.landing_conn_id)
        if conn is None:
            return None
        from h3ops import s3
        extra = conn.extra_dejson or {}
        return s3.client(endpoint_url=extra.get("endpoint_url") or conn.host or None,
                         region=extra.get("region_name"), access_key=conn.login, secret_key=conn.password)


class ServingHook(BaseHook):
    conn_name_attr = "serving_conn_id"
    default_conn_name = SERVING_CONN_ID
    conn_type = "http"
    hook_name = "h3ops serving (OpenAI-compatible)"

    def __init__(self, serving_conn_id: str = SERVING_CONN_ID) -> None:
        super().__init__()
        self.serving_conn_id = serving_conn_id

    def endpoint(self) -> tuple[str | None, str | None]:
        """(base URL, admin token) from the connection; (None, None) when it is absent (the step
        then falls back to $H3OPS_SERVING_URL, or notifies nothing)."""
        conn = _connection(self.serving_conn_id)
        if conn is None or not conn.host:
            return None, None
        url = conn.host if "://" in conn.host else f"http://{conn.host}"
        if conn.port and url.count(":") < 2:
            url = f"{url}:{conn.port}"
        return url, conn.password or None
