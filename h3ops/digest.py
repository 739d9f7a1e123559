"""Content digests: the identity of data, configs and checkpoints in lineage and idempotency keys."""
from __future__ import annotations

import hashlib
import json
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


def digest_dir(path: str | Path) -> str:
    """Digest of a folder's files (names and bytes), h3ops.json and diagnostics.json excluded."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        if rel in _NOT_CONTENT or any(part.startswith(".") for part in f.relative_to(root).parts):
            continue
        h.update(rel.encode() + b"\0" + digest_file(f).encode() + b"\n")
    return "sha256:" + h.hexdigest()


def short(digest: str, n: int = 12) -> str:
    return digest.split(":", 1)[-1][:n]
