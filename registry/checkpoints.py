"""Checks a checkpoint folder must pass before anything is uploaded, and its lineage as tags.

Refusing early is what keeps the registry clean: a folder without h3ops.json, with a pickle
checkpoint, links, code, non-finite weights or a truncated safetensors file never reaches the
artifact store (h3ops.safe_checkpoint). The idempotency key names inputs and content together.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from h3ops.checkpoint import CheckpointError, Manifest
from h3ops.digest import digest_dir, digest_json
from h3ops.names import MODEL_KINDS
from h3ops.safe_checkpoint import check_checkpoint_folder

KINDS = MODEL_KINDS  # the one vocabulary (h3ops/names.py)
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
    def inputs_key(self) -> str:
        """The inputs that define the checkpoint (what its h3ops.json and the caller say made it)."""
        return digest_json({"kind": self.kind, "dimension": self.dimension, "base": self.base_digest,
                            "data": self.data_digest, "config": self.config_digest, "method": self.method,
                            "parents": [p.get("digest", p.get("uri", "")) for p in self.parents]})

    @property
    def idempotency_key(self) -> str:
        # Inputs *and* content: finding a version by this key can only ever return these very bytes.
        # The same inputs with other bytes are refused at registration (registry.api), never answered
        # with the earlier version.
        return digest_json({"inputs": self.inputs_key, "content": self.content_digest})

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
            f"{TAG}inputs_key": self.inputs_key,
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
                       method: str | None = None, allow_remote_code: bool = False) -> Lineage:
    """Validate a checkpoint folder and derive its lineage; explicit arguments override h3ops.json.

    The folder must be plain data with finite weights (h3ops.safe_checkpoint) before anything of it
    is uploaded."""
    root = Path(folder)
    if kind not in KINDS:
        raise CheckpointError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if not root.is_dir():
        raise CheckpointError(f"{root}: checkpoint folder does not exist")
    # First: nothing in the folder is read (not even h3ops.json) before it is known to be plain data.
    check_checkpoint_folder(root, allow_remote_code=allow_remote_code, exact=True, finite=True)
    if not (root / "config.json").is_file():
        raise CheckpointError(f"{root}: no config.json (not a Hugging Face model folder)")
    manifest = Manifest.read(root)  # raises naming the missing h3ops.json
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
