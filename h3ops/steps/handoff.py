"""Handoffs between tasks that share no disk: datasets and their ledgers by s3:// URI and digest.

With `store` set in the config (s3://bucket/prefix), ingest publishes each dataset under
`<store>/datasets/<dimension>/<digest>/` and keeps the ledgers (the latest dataset, each landed
file's outcome) under `<store>/ledgers/<dimension>/`, so a task on any worker finds them. A task
that trains on a dataset fetches it into a local cache keyed by its digest and verifies the content
against the digest it was handed before use. Without `store` (one machine) the workdir holds both.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from h3ops import s3
from h3ops.config import PipelineConfig
from h3ops.steps.common import read_json, workdir, write_json

# dataset.json last: an upload is complete once it is there.
DATASET_FILES = ("train.jsonl", "eval.jsonl", "report.json", "dataset.json")


def _hex(digest: str) -> str:
    return digest.rsplit(":", 1)[-1]


def read_ledger(cfg: PipelineConfig, dimension: str, name: str, default: Any = None) -> Any:
    if not cfg.store:
        return read_json(workdir(cfg, "datasets", dimension) / name, default)
    from botocore.exceptions import ClientError

    try:
        return json.loads(s3.read_text(f"{cfg.store.rstrip('/')}/ledgers/{dimension}/{name}"))
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return default
        raise


def write_ledger(cfg: PipelineConfig, dimension: str, name: str, data: Any) -> None:
    if not cfg.store:
        write_json(workdir(cfg, "datasets", dimension) / name, data)
        return
    bucket, key = s3.split(f"{cfg.store.rstrip('/')}/ledgers/{dimension}/{name}")
    # One PUT replaces the object whole: a reader sees the old ledger or the new one.
    s3.client().put_object(Bucket=bucket, Key=key, ContentType="application/json",
                           Body=json.dumps(data, indent=2, sort_keys=True, default=str).encode())


def publish_dataset(cfg: PipelineConfig, ref: dict) -> dict:
    """The dataset's handoff record: its s3:// URI under the store (same digest), or as it is."""
    if not cfg.store or not ref.get("uri"):
        return ref
    uri = f"{cfg.store.rstrip('/')}/datasets/{ref['dimension']}/{_hex(ref['digest'])}"
    bucket, key = s3.split(uri)
    client = s3.client()
    for name in DATASET_FILES:
        client.upload_file(str(Path(ref["uri"]) / name), bucket, f"{key}/{name}")
    # Nothing in the record may name this worker's disk: the report travels with the dataset.
    return {**ref, "uri": uri, "report": f"{uri}/report.json"}


def dataset_local(cfg: PipelineConfig, dataset: dict) -> Path:
    """A local folder holding the handed dataset, fetched once per digest and verified."""
    from alignment.dataset import DatasetError, load_dataset
    from h3ops.checkpoint import atomic_output_dir

    uri = dataset["uri"]
    if not uri.startswith("s3://"):
        return Path(uri)
    dest = workdir(cfg, "cache", "datasets") / _hex(dataset["digest"])
    if (dest / "dataset.json").is_file():  # only a verified copy is ever renamed into place
        return dest
    bucket, key = s3.split(uri)
    client = s3.client()
    with atomic_output_dir(dest, overwrite=True) as tmp:
        for name in DATASET_FILES:
            client.download_file(bucket, f"{key}/{name}", str(tmp / name))
        got = load_dataset(tmp).digest  # DatasetError if the files disagree with dataset.json
        if got != dataset["digest"]:
            raise DatasetError(f"{uri}: content digest {got} is not the digest the task was handed "
                               f"({dataset['digest']})")
    return dest
