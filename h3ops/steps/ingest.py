"""Ingest: landed preference files of one dimension → a validated dataset with a digest.

The dataset is built from every valid file in the landing location, so the same files always give
the same digest; a dimension "has new data" when that digest differs from the last one ingested
(the ledger). Invalid files are quarantined with their report by alignment's builder and never
reach a dataset.
"""
from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any

from h3ops.config import PipelineConfig
from h3ops.digest import digest_file, digest_json, short
from h3ops.steps import step
from h3ops.steps.common import read_json, workdir, write_json
from h3ops.steps.storage import fetch, list_files


def ledger_path(cfg: PipelineConfig, dimension: str):
    return workdir(cfg, "datasets", dimension) / "latest.json"


def latest_dataset(cfg: PipelineConfig, dimension: str) -> dict | None:
    return read_json(ledger_path(cfg, dimension))


def _seen_path(cfg: PipelineConfig, dimension: str):
    return workdir(cfg, "datasets", dimension) / "seen.json"


def new_files(cfg: PipelineConfig, dimension: str, *, s3_client: Any = None) -> list[str]:
    """Landed files not yet ingested (valid or quarantined): what the sensor waits for."""
    seen = set(read_json(_seen_path(cfg, dimension), []))
    return [f for f in scan(cfg, dimension, s3_client=s3_client) if f not in seen]


@step("scan")
def scan(cfg: PipelineConfig, dimension: str, *, s3_client: Any = None) -> list[str]:
    """Landed files of a dimension (what the sensor pokes for)."""
    dim = cfg.dimension(dimension)
    return list_files(dim.landing, dim.pattern, client=s3_client)


@step("ingest")
def ingest(cfg: PipelineConfig, dimension: str, *, files: list[str] | None = None,
           s3_client: Any = None) -> dict:
    """Validate and build the dimension's dataset; returns its ref plus `new` and `quarantined`."""
    from alignment.dataset import DatasetError, build_dataset

    files = scan(cfg, dimension, s3_client=s3_client) if files is None else files
    staging = workdir(cfg, "landing", dimension)
    sources = [fetch(f, staging, client=s3_client) for f in files]
    quarantine = workdir(cfg, "quarantine", dimension)
    # Same landed files → same folder; the builder returns an existing identical dataset as is.
    key = short(digest_json(sorted(digest_file(p) for p in sources)))
    try:
        if not sources:
            raise DatasetError(f"no {dimension} files in {cfg.dimension(dimension).landing}")
        out = _as_dict(build_dataset(sources, workdir(cfg, "datasets", dimension) / key,
                                     dimension=dimension, quarantine_dir=quarantine))
    except DatasetError as e:  # nothing valid: no dataset, no event, the report says why
        out = {"dimension": dimension, "uri": None, "digest": None, "rows": 0, "error": str(e),
               "quarantined": sorted(str(p) for p in quarantine.glob("*") if not p.name.endswith(".json"))}
    previous = latest_dataset(cfg, dimension)
    out["new"] = bool(out.get("rows")) and (previous or {}).get("digest") != out.get("digest")
    if out["new"]:
        write_json(ledger_path(cfg, dimension), out)
    seen = set(read_json(_seen_path(cfg, dimension), []))
    write_json(_seen_path(cfg, dimension), sorted(seen | set(files)))
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
