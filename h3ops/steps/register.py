"""Register a checkpoint folder in MLflow with its lineage (idempotent in the registry)."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from h3ops.config import PipelineConfig
from h3ops.digest import digest_dir, digest_json
from h3ops.steps import step
from h3ops.steps.common import abspath, registry


def ref_dict(ref: Any) -> dict:
    """A registry VersionRef as the small JSON dict XCom carries."""
    if isinstance(ref, dict):
        return dict(ref)
    return {"name": ref.name, "version": str(ref.version), "uri": ref.uri,
            "run_id": getattr(ref, "run_id", "")}


def settings_digest(cfg: PipelineConfig, kind: str) -> str:
    """The part of the config that determines a checkpoint of this kind (its idempotency input):
    changing the eval limit must not make a new candidate version, changing DPO settings must."""
    if kind in ("candidate", "continual"):
        return digest_json({"dpo": cfg.dpo.model_dump(), "base": cfg.base_model})
    if kind == "merged":
        return digest_json(cfg.merge.model_dump())
    return digest_json({"base": cfg.base_model})


@lru_cache(maxsize=32)
def _dir_digest(path: str, mtime: float) -> str:  # mtime in the key: a rebuilt folder is rehashed
    return digest_dir(path)


def parent_record(reg, parent: str) -> dict:
    """{uri, digest} for a parent given as a local folder or a registered `models:/` URI."""
    if parent.startswith("models:/"):
        ref = reg.resolve(parent)
        return {"uri": ref.uri, "digest": ref.tags.get("h3ops.content_digest", "")}
    folder = abspath(parent)
    return {"uri": str(folder), "digest": _dir_digest(str(folder), folder.stat().st_mtime)}


@step("register")
def register(cfg: PipelineConfig, path: str, kind: str, *, dimension: str | None = None,
             data_digest: str | None = None, parents: list[str] | None = None,
             method: str | None = None, base: str | None = None, config_digest: str | None = None) -> dict:
    """→ {name, version, uri, run_id}; registering the same inputs again returns the existing version.

    `parents` are local folders or `models:/` URIs (recorded with their digests); `base` is the
    common base folder whose digest goes into the lineage and the idempotency key."""
    folder = abspath(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"register: {folder} is not a checkpoint folder")
    reg = registry(cfg)
    records = [parent_record(reg, p) for p in (parents or [])]
    base_digest = parent_record(reg, base)["digest"] if base else None
    ref = reg.register_checkpoint(
        folder, project=cfg.project, kind=kind, dimension=dimension, data_digest=data_digest,
        config_digest=config_digest or settings_digest(cfg, kind), parents=records, method=method,
        base_digest=base_digest)
    return ref_dict(ref)
