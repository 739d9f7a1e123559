"""The one S3 client factory and URI splitter (shared core: boto3 only, imported lazily).

Every part of h3ops that talks to the artifact store builds its client here, so an S3-compatible
server (rclone, MinIO) behind a custom endpoint is addressed the same way everywhere: the endpoint
from the arguments, else AWS_ENDPOINT_URL, else MLFLOW_S3_ENDPOINT_URL (the variable the stacks
already set for MLflow); path-style addressing whenever an endpoint is set.
"""
from __future__ import annotations

import os
from typing import Any


def client(*, endpoint_url: str | None = None, access_key: str | None = None, secret_key: str | None = None,
           region: str | None = None, fail_fast: bool = False) -> Any:
    """A boto3 S3 client; credentials default to boto3's chain (AWS_ACCESS_KEY_ID, ...).
    `fail_fast`: one attempt, short timeouts (health checks, where a retry loop is the caller's)."""
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    settings: dict[str, Any] = {}
    if endpoint:
        settings["s3"] = {"addressing_style": "path"}
    if fail_fast:
        settings.update(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=10)
    return boto3.client("s3", endpoint_url=endpoint or None,
                        region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
                        aws_access_key_id=access_key or None, aws_secret_access_key=secret_key or None,
                        config=Config(**settings))


def split(uri: str) -> tuple[str, str]:
    """('bucket', 'key/or/prefix') of an s3:// URI; ValueError without a bucket."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket in S3 URI")
    return bucket, key.strip("/")


def read_text(uri: str, *, s3_client: Any = None, max_bytes: int | None = None) -> str:
    """One object's text; `max_bytes` refuses a larger object before reading it."""
    bucket, key = split(uri)
    c = s3_client or client()
    if max_bytes is not None:
        size = c.head_object(Bucket=bucket, Key=key)["ContentLength"]
        if size > max_bytes:
            raise ValueError(f"{uri}: {size} bytes is more than the {max_bytes} allowed")
    return c.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
