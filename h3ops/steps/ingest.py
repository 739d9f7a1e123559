"""Ingest: landed preference files of one dimension → a validated dataset with a digest.

The dataset is built from every valid file in the landing location, so the same files always give
the same digest; a dimension "has new data" when that digest differs from the last one ingested
(latest.json). Each file's outcome is recorded by content digest (files.json): invalid files are
quarantined with their report by alignment's builder, never reach a dataset and are not retried
until they change; one poison file never stops the others.
"""
from __future__ import annotations

import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from alignment.sources import RefusedKey, staged_path
from h3ops.config import PipelineConfig
from h3ops.digest import digest_file, digest_json, short
from h3ops.steps import step
from h3ops.steps.common import workdir
from h3ops.steps.handoff import publish_dataset, read_ledger, write_ledger
from h3ops.steps.storage import fetch, list_files, list_versions, local_version, remote_version


def latest_dataset(cfg: PipelineConfig, dimension: str) -> dict | None:
    return read_ledger(cfg, dimension, "latest.json")


def file_ledger(cfg: PipelineConfig, dimension: str) -> dict[str, dict]:
    """{landed file: {"digest", "outcome": ingested | quarantined | refused, "rows"}}."""
    return read_ledger(cfg, dimension, "files.json", {})


def new_files(cfg: PipelineConfig, dimension: str, *, s3_client: Any = None) -> list[str]:
    """Landed files not yet ingested, or changed since (a corrected quarantined file): what the
    sensor waits for. Compares versions (ETag, size and mtime), reading no file."""
    seen = file_ledger(cfg, dimension)
    dim = cfg.dimension(dimension)
    current = list_versions(dim.landing, dim.pattern, client=s3_client)
    return sorted(f for f, v in current.items() if seen.get(f, {}).get("version") != v)


@step("scan")
def scan(cfg: PipelineConfig, dimension: str, *, s3_client: Any = None) -> list[str]:
    """Landed files of a dimension (what the sensor pokes for)."""
    dim = cfg.dimension(dimension)
    return list_files(dim.landing, dim.pattern, client=s3_client)


def _content_digest(local: Path) -> str:
    # A link is refused unread: its identity is where it points, never the target's bytes.
    return "symlink:" + os.readlink(local) if local.is_symlink() else digest_file(local)


def _local_copy(uri: str, staging: Path, before: dict | None, client: Any, versions: dict) -> Path:
    """The file to read: local files in place; an S3 object downloaded only when its ETag differs
    from the ledger's (or its staged copy is gone or altered), so a rerun re-downloads nothing."""
    if not uri.startswith("s3://"):
        versions[uri] = versions.get(uri) or local_version(Path(uri))
        return fetch(uri, staging, client=client)
    staged = staged_path(staging, uri)  # refuses a hostile key before any request
    kept = bool(before) and staged.is_file() and digest_file(staged) == before.get("digest")
    try:
        versions[uri] = versions.get(uri) or remote_version(uri, client)
        if kept and before.get("version") == versions[uri]:
            return staged
        return fetch(uri, staging, client=client)
    except Exception:
        if kept and before.get("outcome") == "ingested":  # the store hiccuped: keep the last good
            versions[uri] = before.get("version")         # copy rather than drop its rows
            return staged
        raise


@step("ingest")
def ingest(cfg: PipelineConfig, dimension: str, *, files: list[str] | None = None,
           s3_client: Any = None) -> dict:
    """Validate and build the dimension's dataset from every good landed file.

    Each file's outcome is kept in the file ledger (files.json, one atomic write per run) by its
    content digest: a quarantined or refused file is not retried until its content changes, and
    `processed` lists the files looked at for the first time (or changed) in this run."""
    from alignment.dataset import DatasetError, build_dataset

    dim = cfg.dimension(dimension)
    versions = list_versions(dim.landing, dim.pattern, client=s3_client)  # one listing for all files
    files = sorted(versions) if files is None else files
    staging = workdir(cfg, "landing", dimension)
    quarantine = workdir(cfg, "quarantine", dimension)
    ledger = file_ledger(cfg, dimension)
    sources: dict[str, Path] = {}  # local path -> the file's name (URI) in reports
    names: dict[str, str] = {}
    digests: dict[str, str] = {}
    processed: list[str] = []
    errors: list[str] = []
    for uri in files:
        before = ledger.get(uri)
        try:
            local = _local_copy(uri, staging, before, s3_client, versions)
            digests[uri] = _content_digest(local)
        except RefusedKey as e:  # a hostile S3 key: refused, never written anywhere
            if (before or {}).get("outcome") != "refused":
                processed.append(uri)
            ledger[uri] = {"digest": None, "outcome": "refused", "rows": 0, "reason": str(e),
                           "version": versions.get(uri)}
            continue
        except Exception as e:  # noqa: BLE001 - network, a file gone meanwhile: not recorded, retried
            errors.append(f"{uri}: {type(e).__name__}: {str(e)[:300]}")
            continue
        if before and before["digest"] == digests[uri]:
            ledger[uri] = {**before, "version": versions[uri]}  # touched, not changed: seen
            if before["outcome"] != "ingested":
                continue  # quarantined or refused: not retried until the content changes
        else:
            processed.append(uri)
        sources[str(local)] = local
        names[str(local)] = uri
    # Same landed content -> same folder; the builder returns an existing identical dataset as is.
    key = short(digest_json(sorted(digests[names[p]] for p in sources)))
    try:
        if not sources:
            raise DatasetError(f"no {dimension} files to ingest in {cfg.dimension(dimension).landing}")
        ref = build_dataset(list(sources.values()), workdir(cfg, "datasets", dimension) / key,
                            dimension=dimension, quarantine_dir=quarantine, names=names)
        out, outcomes = _as_dict(ref), ref.files
    except DatasetError as e:  # nothing valid: no dataset, no event, the report says why
        out = {"dimension": dimension, "uri": None, "digest": None, "rows": 0, "error": str(e)}
        outcomes = e.files
    for o in outcomes:
        ledger[o["path"]] = {"digest": digests[o["path"]], "outcome": o["outcome"], "rows": o["rows"],
                             "version": versions.get(o["path"])}
    write_ledger(cfg, dimension, "files.json", ledger)
    out["quarantined"] = sorted(u for u in processed if ledger.get(u, {}).get("outcome") == "quarantined")
    out["refused"] = sorted(u for u in processed if ledger.get(u, {}).get("outcome") == "refused")
    out["processed"] = processed
    if errors:
        out["fetch_errors"] = errors
    out.pop("files", None)
    previous = latest_dataset(cfg, dimension)
    out["new"] = bool(out.get("rows")) and (previous or {}).get("digest") != out.get("digest")
    if out["new"]:
        out = publish_dataset(cfg, out)  # the record other workers get: an s3:// URI with the store
        write_ledger(cfg, dimension, "latest.json", out)
    return out


def _as_dict(ref: Any) -> dict:
    if is_dataclass(ref):
        data = asdict(ref)
    elif hasattr(ref, "model_dump"):
        data = ref.model_dump()
    else:
        data = dict(vars(ref))
    return {k: (str(v) if hasattr(v, "__fspath__") else v) for k, v in data.items()}


@step("datasets")
def datasets(cfg: PipelineConfig, dimensions: list[str] | None = None) -> list[dict]:
    """The latest ingested dataset of each (requested) dimension that has one."""
    names = dimensions or [d.name for d in cfg.dimensions]
    return [ds for d in names if (ds := latest_dataset(cfg, d))]
