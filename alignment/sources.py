"""Reading preference files: local files, folders, and s3:// URIs, record by record.

A record carries its 1-based line (row index for JSON arrays and Parquet) so every fault in a
report points at a place in the file. Undecodable lines become faults, not exceptions: one bad
byte must not hide the other rows' faults.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass
class Record:
    line: int
    data: Any = None
    fault: str | None = None  # why the line could not be read at all


def read_records(path: str | Path) -> Iterator[Record]:
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield Record(i, row)
        return
    raw = path.read_bytes()
    if path.suffix == ".json" and raw.lstrip()[:1] == b"[":
        try:
            rows = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield Record(1, fault=f"not valid UTF-8 ({e.reason} at byte {e.start})")
            return
        except ValueError as e:
            yield Record(1, fault=f"invalid JSON ({e})")
            return
        for i, row in enumerate(rows, start=1):
            yield Record(i, row)
        return
    for i, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Record(i, fault=f"not valid UTF-8 ({e.reason} at byte {e.start})")
            continue
        try:
            yield Record(i, json.loads(text))
        except ValueError as e:
            yield Record(i, fault=f"invalid JSON ({e})")


def expand_local(source: str | Path) -> list[Path]:
    """A file, or every preference file under a folder (sorted, so builds are reproducible)."""
    p = Path(source)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not files:
            raise FileNotFoundError(f"{p}: folder holds no {'/'.join(SUFFIXES)} files")
        return files
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such preference file or folder")
    if p.suffix not in SUFFIXES:
        raise ValueError(f"{p}: unsupported file type {p.suffix!r} (expected {', '.join(SUFFIXES)})")
    return [p]


def s3_client():
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    # S3-compatible stores (rclone, MinIO) behind a custom endpoint expect path-style addressing.
    config = Config(s3={"addressing_style": "path"}) if endpoint else None
    return boto3.client("s3", endpoint_url=endpoint, config=config)


def fetch_s3(uri: str, into: Path) -> list[tuple[str, Path]]:
    """Download s3://bucket/key or every preference object under s3://bucket/prefix/."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{uri}: not an s3://bucket/key URI")
    client = s3_client()
    keys = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=key):
        keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(SUFFIXES)]
    if not keys:
        raise FileNotFoundError(f"{uri}: no {'/'.join(SUFFIXES)} objects found")
    out = []
    for k in sorted(keys):
        local = into / bucket / k
        local.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, k, str(local))
        out.append((f"s3://{bucket}/{k}", local))
    return out


def resolve(sources: list[str | Path], workdir: Path | None = None) -> list[tuple[str, Path]]:
    """Each source as (name for reports, local file)."""
    out: list[tuple[str, Path]] = []
    for s in sources:
        if str(s).startswith("s3://"):
            workdir = workdir or Path(tempfile.mkdtemp(prefix="h3ops-s3-"))
            out += fetch_s3(str(s), workdir)
        else:
            out += [(str(f), f) for f in expand_local(s)]
    return out
