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


def local_model(cfg: PipelineConfig, uri: str, digest: str | None = None) -> Path:
    """A local folder for a model given as a path or a `models:/…`/`runs:/…`/`s3://` URI.

    Downloads are atomic and digest-checked, so a finished copy is reused. Wherever the content
    digest is known, the copy is cached under it, so a worker that already holds that content,
    whatever URI names it, downloads nothing: a registered version's digest tag (models:/, and
    runs:/<run>/checkpoint of a registered checkpoint's run), else `digest`, the digest the caller
    was handed (h3ops/digest.py: digest_dir). Other URIs are cached under their name."""
    if not is_remote(uri):
        path = abspath(uri.removeprefix("file://"))
        if not path.is_dir():
            raise FileNotFoundError(f"{uri}: model folder does not exist")
        return path
    from h3ops.checkpoint import CheckpointError

    reg = registry(cfg)
    known = None
    if uri.startswith("models:/"):
        ref = reg.resolve(uri)
        uri, known = ref.uri, ref.tags.get("h3ops.content_digest")
    elif uri.startswith("runs:/"):
        known = _run_checkpoint_digest(reg, uri)
    if digest and known and digest != known:
        raise CheckpointError(f"{uri} holds content {known}, not the {digest} this task was handed")
    digest = known or digest
    key = digest.rsplit(":", 1)[-1] if digest else uri.replace(":/", "").replace("/", "_").replace("@", "_at_")
    dest = workdir(cfg, "downloads") / key
    if (dest / "config.json").is_file():
        return dest
    if uri.startswith("models:/"):
        return Path(reg.download(uri, dest, overwrite=True))
    return _fetch_verified(reg, uri, dest, digest)


def _run_checkpoint_digest(reg, uri: str) -> str | None:
    """The content digest a registered checkpoint's run is tagged with, for its `checkpoint` folder."""
    run_id, _, path = uri.removeprefix("runs:/").partition("/")
    if path.strip("/") != "checkpoint":
        return None
    return reg.client.get_run(run_id).data.tags.get("h3ops.content_digest")


def _fetch_verified(reg, uri: str, dest: Path, digest: str | None) -> Path:
    """Download a runs:/ or s3:// folder into `dest` atomically; with a digest, only matching content
    is ever renamed into place (nothing is left behind otherwise)."""
    import shutil
    import tempfile

    from h3ops import s3
    from h3ops.checkpoint import CheckpointError, atomic_output_dir
    from h3ops.digest import digest_dir

    with atomic_output_dir(dest, overwrite=True) as tmp:
        if uri.startswith("runs:/"):
            run_id, _, path = uri.removeprefix("runs:/").partition("/")
            scratch = Path(tempfile.mkdtemp(dir=tmp))
            got = Path(reg.client.download_artifacts(run_id, path.strip("/"), str(scratch)))
            for p in (got.iterdir() if got.is_dir() else [got]):
                shutil.move(str(p), tmp / p.name)
            shutil.rmtree(scratch)
        else:
            bucket, prefix = s3.split(uri)
            client = s3.client()
            objects = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=f"{prefix}/") for o in page.get("Contents", [])]
            if not objects:
                raise FileNotFoundError(f"{uri}: no model files under this prefix")
            for key in objects:
                rel = key[len(prefix) + 1:]
                if not rel or rel.startswith("/") or ".." in rel.split("/"):
                    raise CheckpointError(f"{uri}: refusing object key {key!r} (it would land outside the model folder)")
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, key, str(tmp / rel))
        if digest and (got_digest := digest_dir(tmp)) != digest:
            raise CheckpointError(f"{uri}: downloaded files hold content {got_digest}, not the {digest} "
                                  "this task was handed; nothing was kept")
    return dest


def read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default
