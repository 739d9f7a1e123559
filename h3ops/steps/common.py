"""Small helpers shared by the steps: absolute locations, the registry client, local copies."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from h3ops.atomic import write_json  # noqa: F401 - the steps' ledgers are written with it
from h3ops.config import PipelineConfig


def abspath(p: str | os.PathLike) -> Path:
    return Path(p).expanduser().resolve()


def tracking_uri(cfg: PipelineConfig) -> str:
    """SQLite URIs relative to the working directory become absolute (tasks may chdir)."""
    uri = cfg.registry.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = abspath(uri.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return uri


def artifact_location(cfg: PipelineConfig) -> str | None:
    loc = cfg.registry.artifact_location
    if loc and "://" not in loc and not loc.startswith("file:"):
        path = abspath(loc)
        path.mkdir(parents=True, exist_ok=True)
        return path.as_uri()
    return loc


def registry(cfg: PipelineConfig):
    from registry.api import Registry
    return Registry(tracking_uri(cfg), registry_uri=cfg.registry.registry_uri,
                    artifact_location=artifact_location(cfg))


def workdir(cfg: PipelineConfig, *parts: str) -> Path:
    path = abspath(cfg.workdir).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_remote(uri: str) -> bool:
    """A model given as a `models:/…`, `runs:/…` or `s3://` URI (fetched by local_model), not a path."""
    return uri.startswith(("models:/", "runs:/", "s3://"))


def local_model(cfg: PipelineConfig, uri: str) -> Path:
    """A local folder for a model given as a path or a `models:/…`/`runs:/…`/`s3://` URI."""
    if not is_remote(uri):
        path = abspath(uri.removeprefix("file://"))
        if not path.is_dir():
            raise FileNotFoundError(f"{uri}: model folder does not exist")
        return path
    # Downloads are atomic and digest-checked, so a finished copy is reused. A registered version
    # is cached under its content digest (a worker that already holds that content, whatever the
    # version or alias that names it, downloads nothing); other URIs under their name.
    key = uri.replace(":/", "").replace("/", "_").replace("@", "_at_")
    reg = registry(cfg)
    if uri.startswith("models:/"):
        ref = reg.resolve(uri)
        digest = ref.tags.get("h3ops.content_digest")
        if digest:
            uri, key = ref.uri, digest.rsplit(":", 1)[-1]
    dest = workdir(cfg, "downloads") / key
    if (dest / "config.json").is_file():
        return dest
    return Path(reg.download(uri, dest))


def read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default
