"""Landing locations: a local folder or an `s3://bucket/prefix`, listed and fetched the same way.

The S3 client is passed in (the Airflow hook builds it from a connection); without one, the shared
factory (h3ops.s3) builds it from the environment.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from h3ops.s3 import split as split_s3


def _client(client: Any):
    if client is not None:
        return client
    from h3ops import s3
    return s3.client()


def list_files(location: str, pattern: str = "*", client: Any = None) -> list[str]:
    """Files under `location` matching `pattern`, as sorted paths or s3:// URIs."""
    return sorted(list_versions(location, pattern, client))


def local_version(path: Path) -> str:
    st = path.lstat()  # a link's own, never its target's
    return f"{st.st_size}:{st.st_mtime_ns}"


def list_versions(location: str, pattern: str = "*", client: Any = None) -> dict[str, str]:
    """{file: version} under `location`: an S3 object's ETag, a local file's size and mtime. A
    changed version is how the sensor notices a corrected file without reading every file."""
    if location.startswith("s3://"):
        bucket, prefix = split_s3(location)
        pages = _client(client).get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")
        return {f"s3://{bucket}/{o['Key']}": o["ETag"] for page in pages for o in page.get("Contents", [])
                if fnmatch.fnmatch(o["Key"].rsplit("/", 1)[-1], pattern)}
    root = Path(location.removeprefix("file://"))
    if not root.is_dir():
        return {}
    # Links are listed, not resolved: ingest refuses them (never read through a link) and says so.
    root = root.resolve()
    return {str(p): local_version(p) for p in root.glob(pattern)
            if (p.is_symlink() or p.is_file()) and not p.name.startswith(".")}


def fetch(uri: str, dest_dir: Path, client: Any = None) -> Path:
    """A local copy of one landed file (local files are used in place). An S3 object is staged
    under a name derived from its whole key, inside `dest_dir`; a key that could escape is refused."""
    from alignment.sources import staged_path

    if not uri.startswith("s3://"):
        return Path(uri)
    dest = staged_path(dest_dir, uri)  # ValueError for hostile keys, before any I/O
    bucket, key = split_s3(uri)
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    _client(client).download_file(bucket, key, str(tmp))
    tmp.replace(dest)
    return dest


def remote_version(uri: str, client: Any = None) -> str | None:
    """An S3 object's ETag (it changes when the content does); None for a local file."""
    if not uri.startswith("s3://"):
        return None
    bucket, key = split_s3(uri)
    return _client(client).head_object(Bucket=bucket, Key=key)["ETag"]
