"""Content digests: the identity of data, configs and checkpoints in lineage and idempotency keys."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_CHUNK = 8 << 20
# h3ops.json describes a checkpoint and diagnostics.json is derived from its inputs (written only on
# request): neither is part of what the checkpoint *is*, so a merge with or without diagnostics has
# the same content digest (registry idempotency, download verification).
_NOT_CONTENT = {"h3ops.json", "diagnostics.json"}


def digest_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return "sha256:" + h.hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def digest_json(obj: Any) -> str:
    """Digest of a settings mapping, independent of key order."""
    return digest_bytes(canonical_json(obj))


def checkpoint_files(path: str | Path) -> list[Path]:
    """Every file that belongs to a checkpoint folder, sorted: what registration uploads.

    Hidden files and folders (`.cache/`, `.env`, `.git/`) are local state, not the model: they are
    neither uploaded nor digested, so what is uploaded is exactly what the digest covers (plus the
    metadata files below, which the version's tags describe). Links are not followed (and a folder
    holding any is refused before upload, h3ops.safe_checkpoint).
    """
    root = Path(path)
    out = []
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [Path(top) / f for f in files if not f.startswith(".")]
    return sorted(out)


def content_files(path: str | Path) -> list[Path]:
    """The files a checkpoint's content digest covers: checkpoint_files less h3ops.json/diagnostics.json."""
    root = Path(path)
    return [f for f in checkpoint_files(root) if f.relative_to(root).as_posix() not in _NOT_CONTENT]


def digest_dir(path: str | Path) -> str:
    """Digest of a folder's content files (names and bytes), see content_files."""
    root = Path(path)
    h = hashlib.sha256()
    for f in content_files(root):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + digest_file(f).encode() + b"\n")
    return "sha256:" + h.hexdigest()


def short(digest: str, n: int = 12) -> str:
    return digest.split(":", 1)[-1][:n]
