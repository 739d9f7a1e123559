"""A checkpoint folder is data, never code or links: the one check registration and merging share.

Refused (CheckpointError, one line naming the folder and the file):
- symbolic links anywhere in the folder, and anything that is not a plain file or folder: a link to
  a secret would be copied into a merged output or uploaded as an artifact;
- code: `*.py` files and `auto_map` in config.json / tokenizer_config.json (transformers would
  import it with trust_remote_code), unless `allow_remote_code`;
- pickle files (`*.bin`, `*.pt`, `*.pth`, `*.pkl`, `*.ckpt`, …) beside safetensors weights: loading
  them can run code, and nothing reads them. A pickle-only checkpoint needs `allow_pickle`;
- index entries pointing outside the folder and malformed safetensors headers (h3ops.checkpoint);
- with `finite`, weights holding NaN or Inf (what registration asks for).

Hidden files and folders are not part of a checkpoint (h3ops.digest.checkpoint_files): they are never
uploaded, digested or copied, so only the link check looks at them.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from h3ops.checkpoint import CheckpointError, read_safetensors_header, weight_files

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
CODE_SUFFIXES = (".py",)
REMOTE_CODE_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json",
                       "preprocessor_config.json")
_HINT = "checkpoints are data; pass --allow-remote-code (allow_remote_code=True) to accept it"


def check_checkpoint_folder(folder: str | Path, *, allow_remote_code: bool = False, allow_pickle: bool = False,
                            weights: bool = True, exact: bool = False, finite: bool = False) -> list[Path]:
    """Refuse a folder that is not plain checkpoint data; return its weight files ([] if not `weights`).

    `weights=False` checks a folder that only lends side files (a tokenizer_source); `exact` also
    refuses bytes after the last tensor; `finite` reads every float weight for NaN/Inf."""
    root = Path(folder)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a checkpoint folder (does not exist)")
    visible = _refuse_links_and_specials(root)
    if not allow_remote_code:
        _refuse_code(root, visible)
    pickles = [p for p in visible if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles and (not allow_pickle or any(p.suffix == ".safetensors" for p in visible)):
        names = ", ".join(p.relative_to(root).as_posix() for p in pickles[:5])
        raise CheckpointError(f"{root}: pickle file(s) {names}: pickle can run code when loaded; remove them "
                              "(pickle weights need allow_pickle, and never sit beside safetensors ones)")
    if not weights:
        return []
    files = weight_files(root, allow_pickle=allow_pickle)
    for f in files:
        if f.suffix == ".safetensors":
            read_safetensors_header(f, exact=exact)  # malformed headers: one line naming file and tensor
            if finite:
                check_finite(f)
    return files


def _refuse_links_and_specials(root: Path) -> list[Path]:
    """Walk the folder without following links; return its visible (non-hidden) regular files."""
    visible = []
    for top, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(top) / name
            mode = os.lstat(path).st_mode
            rel = path.relative_to(root).as_posix()
            if stat.S_ISLNK(mode):
                raise CheckpointError(f"{root}: {rel} is a symlink (to {os.readlink(path)}); a checkpoint folder "
                                      "holds plain files only: copy the real file in (e.g. cp -rL)")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise CheckpointError(f"{root}: {rel} is not a plain file or folder")
            hidden = any(part.startswith(".") for part in Path(rel).parts)
            if stat.S_ISREG(mode) and not hidden:
                visible.append(path)
    return sorted(visible)


def _refuse_code(root: Path, visible: list[Path]) -> None:
    for name in REMOTE_CODE_CONFIGS:
        path = root / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: must be a JSON object, got {type(data).__name__}")
        if data.get("auto_map"):
            raise CheckpointError(f"{path}: auto_map names remote code ({json.dumps(data['auto_map'])[:120]}); "
                                  f"{_HINT}")
    code = [p for p in visible if p.suffix.lower() in CODE_SUFFIXES]
    if code:
        raise CheckpointError(f"{root}: {code[0].relative_to(root).as_posix()} is code; {_HINT}")


# For each float dtype: (numpy view, bits that are all ones exactly when the value is NaN or Inf).
# Checked on the raw bits, so bfloat16 and float8 need neither torch nor a conversion.
_NON_FINITE = {"F64": ("<u8", 0x7FF0000000000000), "F32": ("<u4", 0x7F800000), "F16": ("<u2", 0x7C00),
               "BF16": ("<u2", 0x7F80), "F8_E5M2": ("u1", 0x7C), "F8_E4M3": ("u1", 0x7F)}
_CHUNK = 16 << 20


def check_finite(path: str | Path) -> None:
    """Refuse a safetensors file with a NaN or Inf in any float tensor, naming the tensor."""
    import numpy as np

    path = Path(path)
    header, start = read_safetensors_header(path)
    with open(path, "rb") as f:
        for name, info in header.items():
            if name == "__metadata__" or info["dtype"] not in _NON_FINITE:
                continue
            view, mask = _NON_FINITE[info["dtype"]]
            a, b = info["data_offsets"]
            f.seek(start + a)
            bad, left = 0, b - a
            while left:
                block = f.read(min(left, _CHUNK))
                if not block:
                    raise CheckpointError(f"{path}: truncated while reading tensor {name!r}")
                left -= len(block)
                bits = np.frombuffer(block, dtype=view)
                bad += int(np.count_nonzero((bits & mask) == mask))
            if bad:
                raise CheckpointError(f"{path}: tensor {name!r} holds {bad} non-finite value(s) (NaN/Inf); "
                                      "a checkpoint with them is never registered")
