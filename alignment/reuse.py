"""One DPO job, trained once per worker, whatever asked for it.

The continual baseline's first stage and the first dimension's candidate are the same training job:
the same base, data, dimension and settings (the paper's continual DPO starts with single-dimension
DPO). At 8B that is GPU hours spent twice. A job index (a folder on the worker, one small file per
job key) points at the finished checkpoint of each job; a second request copies its files and
writes its own h3ops.json (its own kind, parents and stage), recording where the weights came from.

The job key leaves out what only labels the result (kind, parents): two requests with equal keys
would get the same weights from a fresh run too, since training is seeded (bit-identical on CPUs
here; GPU kernels may differ in the last bits). A pointer is trusted only if
the checkpoint it names still carries that job key in its own manifest; anything else trains.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from h3ops.checkpoint import MANIFEST, read_manifest
from h3ops.digest import digest_json, short

# Copied from the source manifest: what the training run measured, not what the request says.
TRAINING_FIELDS = ("metrics", "resumed_from_step", "devices", "distributed_type", "world_size",
                   "param_dtype", "compute_dtype", "peak_gpu_mib")


def job_key(base_digest: str, data_digest: str, dimension: str, settings_key: dict[str, Any]) -> str:
    return digest_json({"base": base_digest, "data": data_digest, "dimension": dimension, "settings": settings_key})


def _pointer(index: Path, key: str) -> Path:
    return index / f"{short(key, 32)}.json"


def find(index: Path, key: str) -> Path | None:
    """The finished checkpoint of job `key` on this worker, or None."""
    try:
        path = Path(json.loads(_pointer(index, key).read_text())["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    m = read_manifest(path) if path.is_dir() and not path.is_symlink() else None
    if m is None or m.parameters.get("job_key") != key:
        return None
    return path


def record(index: Path, key: str, checkpoint: Path) -> None:
    index.mkdir(parents=True, exist_ok=True)
    tmp = _pointer(index, key).with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"path": str(Path(checkpoint).resolve())}) + "\n")
    tmp.replace(_pointer(index, key))


def copy_checkpoint(src: Path, dst: Path) -> dict[str, Any]:
    """Every file of `src` but its manifest into `dst`; returns the training fields of its manifest."""
    for item in src.iterdir():
        if item.name == MANIFEST or item.is_symlink():
            continue
        if item.is_dir():
            shutil.copytree(item, dst / item.name, symlinks=True)
        else:
            shutil.copy2(item, dst / item.name)
    m = read_manifest(src)
    return {k: m.parameters[k] for k in TRAINING_FIELDS if k in m.parameters}
