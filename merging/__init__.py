"""Streaming model merging: lazy safetensors I/O, a method-agnostic engine, methods by name.

    from merging import merge
    merge({"merge_method": "ties", "base_model": "base", "models": [...]}, "out")
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from merging.method import MergeConfigError

if TYPE_CHECKING:
    from pathlib import Path


def merge(config, out_dir, *, seed: int = 0, device: str = "cpu", max_shard_size: "str | int" = "2GB",
          overwrite: bool = False, allow_pickle: bool = False, allow_remote_code: bool = False,
          progress: "bool | None" = None, diagnostics: bool = False, resolve=None) -> "Path":
    """Merge the checkpoints a mergekit-style config names into `out_dir`; return the folder.

    `diagnostics=True` also writes diagnostics.json (conflict statistics per tensor, the inputs'
    digests) inside the folder and prints a per-layer-type summary. Inputs must be plain data (no
    links, no code unless `allow_remote_code`); `resolve` fetches references written as URIs.
    Imported lazily so `import merging` stays free of torch for callers that only need the config.
    """
    from merging.engine import merge as _merge

    return _merge(config, out_dir, seed=seed, device=device, max_shard_size=max_shard_size,
                  overwrite=overwrite, allow_pickle=allow_pickle, allow_remote_code=allow_remote_code,
                  progress=progress, diagnostics=diagnostics, resolve=resolve)


__all__ = ["merge", "MergeConfigError"]
