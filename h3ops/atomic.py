"""Atomic small-file writes: a reader sees the old file or the new one, never half of either.

The one helper for it (manifests, reports, state records, landed demo files): a temporary sibling
in the same folder, renamed over the target; nothing is left behind when the write fails.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (a temporary sibling renamed over it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, data: Any, *, indent: int = 2) -> Path:
    """Write JSON atomically, keys sorted."""
    return write_text(path, json.dumps(data, indent=indent, sort_keys=True, default=str) + "\n")
