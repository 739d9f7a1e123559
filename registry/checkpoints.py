"""Checks a checkpoint folder must pass before anything is uploaded, and its lineage as tags.

Refusing early is what keeps the registry clean: a folder without h3ops.json, with a pickle
checkpoint or with a truncated safetensors file never reaches the artifact store.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from h3ops.checkpoint import CheckpointError, Manifest, read_safetensors_header, weight_files
from h3ops.digest import digest_dir, digest_json

KINDS = ("candidate", "continual", "merged", "base")
TAG = "h3ops."  # prefix of every tag h3ops writes


@dataclass(frozen=True)
class Lineage:
    kind: str
    dimension: str | None
    base_digest: str
    data_digest: str
    config_digest: str
    parents: list[dict[str, str]]
    method: str | None
    content_digest: str
    produced_by: str

    @property
    def idempotency_key(self) -> str:
        # The inputs that define the checkpoint, not its bytes: a rerun of the same training with
        # the same base, data and settings finds the existing version even if floats differ.
        return digest_json({"kind": self.kind, "dimension": self.dimension, "base": self.base_digest,
                            "data": self.data_digest, "config": self.config_digest, "method": self.method,
                            "parents": [p.get("digest", p.get("uri", "")) for p in self.parents]})

    def tags(self) -> dict[str, str]:
        return {
            f"{TAG}kind": self.kind,
            f"{TAG}dimension": self.dimension or "",
            f"{TAG}base_digest": self.base_digest,
            f"{TAG}data_digest": self.data_digest,
            f"{TAG}config_digest": self.config_digest,
            f"{TAG}parents": json.dumps(self.parents, sort_keys=True),
            f"{TAG}method": self.method or "",
            f"{TAG}content_digest": self.content_digest,
            f"{TAG}produced_by": self.produced_by,
            f"{TAG}idempotency_key": self.idempotency_key,
        }


def _parents(items: Iterable[Any]) -> list[dict[str, str]]:
    out = []
    for p in items:
        if isinstance(p, Mapping):
            out.append({k: str(v) for k, v in p.items() if k in ("uri", "digest", "role")})
        elif isinstance(p, str) and p.startswith("sha256:"):
            out.append({"digest": p})
        else:
            out.append({"uri": str(p)})
    return out


def inspect_checkpoint(folder: str | Path, *, kind: str, dimension: str | None = None,
                       data_digest: str | None = None, config_digest: str | None = None,
                       base_digest: str | None = None, parents: Iterable[Any] = (),
                       method: str | None = None) -> Lineage:
    """Validate a checkpoint folder and derive its lineage; explicit arguments override h3ops.json."""
    root = Path(folder)
    if kind not in KINDS:
        raise CheckpointError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if not root.is_dir():
        raise CheckpointError(f"{root}: checkpoint folder does not exist")
    if not (root / "config.json").is_file():
        raise CheckpointError(f"{root}: no config.json (not a Hugging Face model folder)")
    manifest = Manifest.read(root)  # raises naming the missing h3ops.json
    for f in weight_files(root):
        read_safetensors_header(f, exact=True)
    content = digest_dir(root)
    parent_list = _parents(parents) or _parents(manifest.parents)
    if base_digest is None:
        base_digest = manifest.settings.get("base_digest") if isinstance(manifest.settings, dict) else None
    if base_digest is None:
        roles = [p for p in parent_list if p.get("role") == "base" and p.get("digest")]
        firsts = [p for p in parent_list if p.get("digest")]
        base_digest = (roles or firsts)[0]["digest"] if (roles or firsts) else (content if kind == "base" else "")
    if not base_digest:
        raise CheckpointError(f"{root}: cannot tell the base model's digest (no parents in h3ops.json); "
                              "pass base_digest or parents")
    data = data_digest or (digest_json(manifest.data_digests) if manifest.data_digests else "")
    config = config_digest or digest_json({"method": manifest.method, "parameters": manifest.parameters,
                                           "seed": manifest.seed, "settings": manifest.settings})
    return Lineage(kind=kind, dimension=dimension or manifest.dimension, base_digest=base_digest,
                   data_digest=data, config_digest=config, parents=parent_list,
                   method=method or manifest.method, content_digest=content, produced_by=manifest.produced_by)
