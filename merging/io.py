"""Lazy sharded safetensors reading and streaming sharded writing, one tensor at a time.

Reading: the header of every shard is parsed up front (names, dtypes, shapes, byte ranges, and a
truncation check); a tensor's bytes are read with a positioned read only when asked for. We read
with `readinto` rather than keeping `safe_open` memory maps: mapped pages that were touched stay in
the process's resident set, so a mmap reader's peak RSS grows with model depth, ours does not.

Writing: the output layout (names, dtypes, shapes) is known before any value is computed, so each
shard's header is written first and tensors are then appended in header order as they are produced.
Nothing larger than one tensor is ever buffered.
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Iterable

import torch

from h3ops.checkpoint import SAFE_INDEX, CheckpointError, read_safetensors_header, weight_files

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
CODES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


def parse_size(size: str | int) -> int:
    """A shard size → bytes: '2GB' → 2e9, '500MiB' → 524_288_000, 1234 → 1234.

    A bare K/M/B suffix is mergekit's count suffix (`--out-shard-size 5B` is 5 billion, as mergekit
    reads it), so a config or command line written for mergekit means the same here; KB/MB/GB/TB
    and KiB/MiB/GiB/TiB are byte units."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"max shard size must be positive, got {size}")
        return size
    text = str(size).strip().upper()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(?:([KMGT])(I?)B?|(B))?", text)
    if not m:
        raise ValueError(f"max shard size {size!r}: expected e.g. 5B (mergekit: 5 billion), 2GB, 500MB, 1GiB "
                         "or a byte count")
    num, unit, binary, billions = float(m.group(1)), m.group(2), m.group(3), m.group(4)
    scale = 1000 ** 3 if billions else (1024 if binary else 1000) ** " KMGT".index(unit or " ")
    value = int(num * scale)
    if value <= 0:
        raise ValueError(f"max shard size must be positive, got {size!r}")
    return value


class _Entry:
    __slots__ = ("file", "dtype", "shape", "start", "end")

    def __init__(self, file: Path, dtype: torch.dtype, shape: tuple[int, ...], start: int, end: int):
        self.file, self.dtype, self.shape, self.start, self.end = file, dtype, shape, start, end


class CheckpointReader:
    """The tensors of one checkpoint folder, read lazily one at a time."""

    def __init__(self, folder: str | Path, allow_pickle: bool = False):
        self.folder = Path(folder)
        self._entries: dict[str, _Entry] = {}
        self._pickled: dict[str, torch.Tensor] | None = None
        files = weight_files(self.folder, allow_pickle=allow_pickle)
        if files and files[0].suffix == ".bin":
            self._load_pickle(files)
            return
        for path in files:
            header, data_start = read_safetensors_header(path)
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if info["dtype"] not in DTYPES:
                    raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
                if name in self._entries:
                    raise CheckpointError(f"{self.folder}: tensor {name!r} appears in two shards")
                a, b = info["data_offsets"]
                self._entries[name] = _Entry(path, DTYPES[info["dtype"]], tuple(info["shape"]),
                                             data_start + a, data_start + b)

    def _load_pickle(self, files: list[Path]) -> None:
        # Only reached with an explicit allow_pickle; weights_only still refuses arbitrary objects.
        self._pickled = {}
        for f in files:
            self._pickled.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))

    def names(self) -> list[str]:
        return list(self._pickled if self._pickled is not None else self._entries)

    def __contains__(self, name: str) -> bool:
        return name in (self._pickled if self._pickled is not None else self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        if self._pickled is not None:
            return tuple(self._pickled[name].shape)
        return self._entries[name].shape

    def dtype(self, name: str) -> torch.dtype:
        if self._pickled is not None:
            return self._pickled[name].dtype
        return self._entries[name].dtype

    def nbytes(self, name: str) -> int:
        e = self._entries.get(name)
        if e is not None:
            return e.end - e.start
        t = self._pickled[name]
        return t.numel() * t.element_size()

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor into fresh memory (nothing stays mapped)."""
        if self._pickled is not None:
            return self._pickled[name].clone()
        e = self._entries[name]
        return self._read(name, e.start, e.end).view(e.dtype).reshape(e.shape)

    def get_range(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of one tensor, flattened in storage order, in its stored dtype."""
        if self._pickled is not None:
            return self._pickled[name].reshape(-1)[start:stop].clone()
        e = self._entries[name]
        size = e.dtype.itemsize
        return self._read(name, e.start + start * size, e.start + stop * size).view(e.dtype)

    def _read(self, name: str, begin: int, end: int) -> torch.Tensor:
        e = self._entries[name]
        raw = torch.empty(end - begin, dtype=torch.uint8)
        if raw.numel():
            with open(e.file, "rb", buffering=0) as f:
                f.seek(begin)
                got = f.readinto(memoryview(raw.numpy()))
            if got != raw.numel():
                raise CheckpointError(f"{e.file}: truncated while reading tensor {name!r}")
        return raw


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())


class ShardedWriter:
    """Write a planned set of tensors into shards of at most `max_shard_size` bytes.

    `plan` is [(name, dtype, shape)] in write order. `write(name, tensor)` must follow that order;
    `close()` checks everything was written and writes the index when there is more than one shard.
    """

    def __init__(self, folder: str | Path, plan: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
                 max_shard_size: str | int = "2GB"):
        self.folder = Path(folder)
        limit = parse_size(max_shard_size)
        shards: list[list[tuple[str, torch.dtype, tuple[int, ...], int]]] = [[]]
        used = 0
        for name, dtype, shape in plan:
            n = _numel(shape) * torch.empty((), dtype=dtype).element_size()
            if shards[-1] and used + n > limit:  # an oversized tensor gets a shard of its own
                shards.append([])
                used = 0
            shards[-1].append((name, dtype, tuple(shape), n))
            used += n
        count = len(shards)
        self._names = ["model.safetensors"] if count == 1 else [
            f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        self._shards = shards
        self._order = [(i, item[0], item[3]) for i, s in enumerate(shards) for item in s]
        self._pos = 0
        self._file = None
        self._shard = -1
        self.total_size = sum(item[3] for s in shards for item in s)

    @property
    def files(self) -> list[str]:
        return list(self._names)

    def _open(self, i: int) -> None:
        if self._file is not None:
            self._file.close()
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dtype, shape, n in self._shards[i]:
            header[name] = {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
        self._file = open(self.folder / self._names[i], "wb")
        self._file.write(struct.pack("<Q", len(blob)) + blob)
        self._shard = i

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.write_parts(name, (tensor,))

    def write_parts(self, name: str, parts: Iterable[torch.Tensor]) -> None:
        """Write one tensor given as consecutive flat pieces (its values in storage order)."""
        if self._pos >= len(self._order) or self._order[self._pos][1] != name:
            expected = self._order[self._pos][1] if self._pos < len(self._order) else None
            raise RuntimeError(f"writer: got tensor {name!r}, expected {expected!r} (plan order)")
        shard, _, n = self._order[self._pos]
        if shard != self._shard:
            self._open(shard)
        written = 0
        for part in parts:
            data = _tensor_bytes(part)
            written += data.nbytes
            if written > n:
                break
            self._file.write(data)
        if written != n:
            raise RuntimeError(f"writer: tensor {name!r} has {written}{'+' if written > n else ''} bytes, planned {n}")
        self._pos += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._pos != len(self._order):
            raise RuntimeError(f"writer: {len(self._order) - self._pos} planned tensor(s) never written")
        if len(self._names) == 1 and not self._order:
            self._open(0)
            self._file.close()
        if len(self._names) > 1:
            weight_map = {name: self._names[i] for i, name, _ in self._order}
            index = {"metadata": {"total_size": self.total_size}, "weight_map": weight_map}
            (self.folder / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")

    def __enter__(self) -> "ShardedWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        elif self._file is not None:
            self._file.close()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
