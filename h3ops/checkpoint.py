"""The checkpoint contract: a Hugging Face folder plus h3ops.json saying what produced it.

Every step that writes a checkpoint (train, merge) writes it into a hidden temporary sibling and
renames it into place only when complete, so a crash never leaves a half-written model behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from h3ops import __version__

MANIFEST = "h3ops.json"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


class CheckpointError(ValueError):
    """A checkpoint folder that breaks the contract; the message names the folder and the fault."""


@dataclass
class Manifest:
    kind: str  # base | candidate | continual | merged
    produced_by: str  # e.g. "h3ops.merge", "h3ops.train.dpo"
    parents: list[dict[str, str]] = field(default_factory=list)  # [{"uri":…, "digest":…}]
    method: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    dimension: str | None = None
    data_digests: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    library_version: str = __version__
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True, default=str) + "\n")
        return path

    @classmethod
    def read(cls, folder: str | Path) -> "Manifest":
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise CheckpointError(f"{folder}: no {MANIFEST} (not produced by h3ops)")
        data = json.loads(path.read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def read_manifest(folder: str | Path) -> Manifest | None:
    """The folder's manifest, or None for a plain Hugging Face folder (e.g. a base model)."""
    return Manifest.read(folder) if (Path(folder) / MANIFEST).is_file() else None


def weight_files(folder: str | Path, allow_pickle: bool = False) -> list[Path]:
    """The safetensors files holding a checkpoint's weights, in index order.

    Pickle checkpoints (`pytorch_model.bin`) can run code when loaded: refused unless allowed.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a checkpoint folder (does not exist)")
    index = root / SAFE_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: unreadable index ({type(e).__name__}: {e})") from None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: weight_map must be an object, got {type(weight_map).__name__}")
        for tensor, shard in weight_map.items():
            _check_shard_name(index, tensor, shard)
        names = list(dict.fromkeys(weight_map.values()))
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise CheckpointError(f"{root}: index names missing shard(s) {missing}")
        return [root / n for n in names]
    single = root / "model.safetensors"
    if single.is_file():
        return [single]
    if any((root / n).is_file() for n in PICKLE_NAMES):
        if not allow_pickle:
            raise CheckpointError(
                f"{root}: holds only a pickle checkpoint (pytorch_model.bin); pickle can run code "
                "when loaded. Convert it to safetensors or pass allow_pickle=True explicitly."
            )
        return sorted(root.glob("pytorch_model*.bin"))
    raise CheckpointError(f"{root}: no model.safetensors or {SAFE_INDEX}")


def read_safetensors_header(path: str | Path, *, exact: bool = False) -> tuple[dict, int]:
    """Parse a safetensors header without torch; return (header, offset of the data block).

    Checks the declared tensor bytes fit in the file (a truncated write is caught before any tensor
    is read); with `exact`, also that nothing follows them. Errors name the file and the fault.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: corrupt safetensors file, truncated ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(
                f"{path}: corrupt safetensors file, truncated or bad header (header of {n} bytes, file {size})")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{path}: corrupt safetensors file, header is not JSON ({e})") from None
    end = _check_layout(path, header)
    need = 8 + n + end
    if need > size or (exact and need != size):
        fault = "truncated" if need > size else "padded"
        raise CheckpointError(f"{path}: corrupt safetensors file, {fault} (tensors need {need} bytes, file has {size})")
    return header, 8 + n


def _check_shard_name(index: Path, tensor: str, shard: Any) -> None:
    """An index entry must name a safetensors file inside the folder: never `../x` or `/abs/x`."""
    where = f"{index}: weight_map[{tensor!r}] = {shard!r}"
    if not isinstance(shard, str) or not shard.endswith(".safetensors"):
        raise CheckpointError(f"{where}: not a .safetensors file name")
    parts = PurePosixPath(shard).parts
    if shard.startswith(("/", "\\")) or ":" in shard or "\\" in shard or ".." in parts or not parts:
        raise CheckpointError(f"{where}: points outside the checkpoint folder (only names inside it are read)")


# Bytes per element of every safetensors dtype (the format's own list).
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _check_layout(path: Path, header: Any) -> int:
    """Validate every header entry (dtype, shape, offsets) the way the safetensors library does:
    each tensor's byte range matches shape × dtype size and ranges tile the data block without
    overlap. Return where the data block ends. Errors name the file and the tensor, in one line."""
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors file, header is not a JSON object "
                              f"(got a {type(header).__name__})")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict):
                raise CheckpointError(f"{path}: corrupt safetensors file, __metadata__ is not an object")
            continue
        where = f"{path}: corrupt safetensors file, tensor {name!r}"
        if not isinstance(info, dict):
            raise CheckpointError(f"{where}: entry is not an object")
        missing = [k for k in ("dtype", "shape", "data_offsets") if k not in info]
        if missing:
            raise CheckpointError(f"{where}: entry lacks {', '.join(missing)}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise CheckpointError(f"{where}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_count(d) for d in shape):
            raise CheckpointError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(o) for o in offsets)):
            raise CheckpointError(f"{where}: data_offsets {offsets!r} is not two non-negative integers")
        start, stop = offsets
        if stop < start:
            raise CheckpointError(f"{where}: data_offsets end {stop} is before start {start}")
        numel = 1
        for d in shape:
            numel *= d
        if stop - start != numel * DTYPE_SIZES[dtype]:
            raise CheckpointError(f"{where}: data_offsets span {stop - start} bytes but shape {shape} of {dtype} "
                                  f"needs {numel * DTYPE_SIZES[dtype]} bytes")
        spans.append((start, stop, name))
    spans.sort()
    end = 0
    for start, stop, name in spans:
        if start < end:
            other = next((n for s, e, n in spans if s < stop and start < e and n != name), "the one before it")
            raise CheckpointError(f"{path}: corrupt safetensors file, tensor {name!r} (bytes {start}-{stop}) "
                                  f"overlaps tensor {other!r}")
        if start > end:
            raise CheckpointError(f"{path}: corrupt safetensors file, {start - end} unclaimed bytes before "
                                  f"tensor {name!r}")
        end = stop
    return end


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `out`; rename it to `out` only if the block succeeds.

    On any exception the temporary folder is removed and `out` is untouched.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: output folder already exists (pass overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
