"""Register a checkpoint folder in MLflow with its lineage (idempotent in the registry)."""
from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any

from h3ops.config import PipelineConfig, config_digest
from h3ops.steps import step
from h3ops.steps.common import abspath, registry


def ref_dict(ref: Any) -> dict:
    """A VersionRef (dataclass, namedtuple or object) as the small JSON dict XCom carries."""
    if is_dataclass(ref):
        data = asdict(ref)
    elif hasattr(ref, "_asdict"):
        data = ref._asdict()
    elif isinstance(ref, dict):
        data = dict(ref)
    else:
        data = {k: getattr(ref, k) for k in ("name", "version", "uri")}
    return {k: (str(v) if k == "version" else v) for k, v in data.items()
            if isinstance(v, (str, int, float, bool, type(None)))}


@step("register")
def register(cfg: PipelineConfig, path: str, kind: str, *, dimension: str | None = None,
             data_digest: str | None = None, parents: list[str] | None = None,
             method: str | None = None) -> dict:
    """→ {name, version, uri}; registering the same inputs again returns the existing version."""
    folder = abspath(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"register: {folder} is not a checkpoint folder")
    ref = registry(cfg).register_checkpoint(
        folder, project=cfg.project, kind=kind, dimension=dimension, data_digest=data_digest,
        config_digest=config_digest(cfg), parents=list(parents or []), method=method)
    return ref_dict(ref)
