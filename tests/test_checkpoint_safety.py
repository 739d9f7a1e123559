"""Checkpoints are data, never code or links: what the merge refuses (issue 12, item 7).

Each test builds the attacker's folder from a real tiny checkpoint and checks the merge refuses it
with one line naming the file (and tensor), leaving no output folder behind. The registration side
of the same check is in tests/test_registry_integrity.py.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from h3ops.checkpoint import CheckpointError, read_safetensors_header
from merging import merge

ROOT = Path(__file__).resolve().parents[1]


def _cfg(base, cands) -> dict:
    return {"merge_method": "ties", "base_model": str(base),
            "models": [{"model": str(c), "parameters": {"density": 0.5}} for c in cands]}


def _no_output(out: Path) -> None:
    assert not out.exists(), f"{out} was written"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")], "temp folder left behind"


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.txt"
    secret.write_text("AWS_SECRET_ACCESS_KEY=TOPSECRET\n")
    return secret


def _to_index(folder: Path, shard: str) -> None:
    """Turn a single-file checkpoint into an indexed one whose every tensor lives in `shard`."""
    header, _ = read_safetensors_header(folder / "model.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: shard for k in header if k != "__metadata__"}}))
    (folder / "model.safetensors").unlink()


# --- the attacker's folders: each edit(folder, tmp_path) -> the name the error must give -----------------

def link_in_copied_file(folder: Path, tmp: Path) -> str:
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer.json").symlink_to(_secret(tmp))
    return "tokenizer.json"


def linked_weights(folder: Path, tmp: Path) -> str:
    real = tmp / "elsewhere.safetensors"
    shutil.move(folder / "model.safetensors", real)
    (folder / "model.safetensors").symlink_to(real)
    return "model.safetensors"


def linked_subfolder(folder: Path, tmp: Path) -> str:
    outside = tmp / "outside"
    outside.mkdir(exist_ok=True)
    _secret(outside)
    (folder / "extra").symlink_to(outside, target_is_directory=True)
    return "extra"


def index_parent_dir(folder: Path, tmp: Path) -> str:
    shutil.copy(folder / "model.safetensors", folder.parent / "x.safetensors")
    _to_index(folder, "../x.safetensors")
    return "../x.safetensors"


def index_absolute(folder: Path, tmp: Path) -> str:
    target = tmp / "abs.safetensors"
    shutil.copy(folder / "model.safetensors", target)
    _to_index(folder, str(target))
    return str(target)


def auto_map(folder: Path, tmp: Path) -> str:
    conf = json.loads((folder / "config.json").read_text())
    conf["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(conf))
    (folder / "modeling_evil.py").write_text("import os\nos.system('echo pwned')\n")
    return "auto_map"


def code_file(folder: Path, tmp: Path) -> str:
    (folder / "modeling_evil.py").write_text("import os\nos.system('echo pwned')\n")
    return "modeling_evil.py"


def pickle_beside(folder: Path, tmp: Path) -> str:
    (folder / "optimizer.pt").write_bytes(b"\x80\x04\x95not really a pickle")
    return "optimizer.pt"


ATTACKS = {f.__name__: f for f in (link_in_copied_file, linked_weights, linked_subfolder, index_parent_dir,
                                   index_absolute, auto_map, code_file, pickle_beside)}


@pytest.mark.parametrize("where", ["base", "candidate"])
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_merge_refuses_unsafe_folder_and_writes_nothing(attack, where, tiny_base, tiny_candidates, tmp_path):
    """Old code: the link was followed (the secret landed in the merged output), the index escaped the
    folder, remote code and pickles beside the weights were accepted."""
    bad = shutil.copytree(tiny_base if where == "base" else tiny_candidates[1], tmp_path / "m" / "bad")
    names = ATTACKS[attack](bad, tmp_path)
    base, cands = (bad, tiny_candidates[:2]) if where == "base" else (tiny_base, [tiny_candidates[0], bad])
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as e:
        merge(_cfg(base, cands), out, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and names in msg, msg
    _no_output(out)


def test_remote_code_needs_the_explicit_flag(tiny_base, tiny_candidates, tmp_path):
    bad = shutil.copytree(tiny_base, tmp_path / "base")
    auto_map(bad, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="--allow-remote-code"):
        merge(_cfg(bad, tiny_candidates[:2]), out, progress=False)
    _no_output(out)
    merge(_cfg(bad, tiny_candidates[:2]), out, progress=False, allow_remote_code=True)
    assert "auto_map" in json.loads((out / "config.json").read_text())
    assert (out / "modeling_evil.py").is_file()  # the code the config names travels with it


def test_tokenizer_source_is_checked_too(tiny_base, tiny_candidates, tmp_path):
    tok = shutil.copytree(tiny_base, tmp_path / "tok")
    link_in_copied_file(tok, tmp_path)
    cfg = {**_cfg(tiny_base, tiny_candidates[:2]), "tokenizer_source": str(tok)}
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="symlink"):
        merge(cfg, out, progress=False)
    _no_output(out)


# --- malformed safetensors headers ----------------------------------------------------------------------

def _rewrite_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    blob = json.dumps(edit(header)).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])


def _size_lies(h):
    h["model.norm.weight"]["dtype"] = "F16"  # same shape as the base, but 256 bytes of offsets for 128
    return h


def _end_before_start(h):
    a, b = h["model.norm.weight"]["data_offsets"]
    h["model.norm.weight"]["data_offsets"] = [b, a]
    return h


def _missing_key(h):
    del h["model.norm.weight"]["data_offsets"]
    return h


def _bad_dtype(h):
    h["model.norm.weight"]["dtype"] = "F33"
    return h


def _overlap(h):
    h["model.norm.weight"]["data_offsets"] = list(h["model.embed_tokens.weight"]["data_offsets"][:1]) * 2
    h["model.norm.weight"]["data_offsets"][1] += 256
    return h


HEADER_FAULTS = {
    "size_disagrees_with_offsets": (_size_lies, r"model\.norm\.weight.*256 bytes"),
    "end_before_start": (_end_before_start, r"model\.norm\.weight.*before"),
    "missing_key": (_missing_key, r"model\.norm\.weight.*data_offsets"),
    "unknown_dtype": (_bad_dtype, r"model\.norm\.weight.*dtype"),
    "overlapping_tensors": (_overlap, r"(?=.*model\.norm\.weight).*overlap"),
    "list_header": (lambda h: [h], "not a JSON object"),
}


@pytest.mark.parametrize("fault", sorted(HEADER_FAULTS))
def test_malformed_header_is_one_line_naming_file_and_tensor(fault, tiny_base, tiny_candidates, tmp_path):
    """Old code: KeyError/TypeError/RuntimeError tracebacks from inside the reader (or a silent merge)."""
    bad = shutil.copytree(tiny_candidates[1], tmp_path / "bad")
    edit, pattern = HEADER_FAULTS[fault]
    _rewrite_header(bad / "model.safetensors", edit)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=pattern) as e:
        merge(_cfg(tiny_base, [tiny_candidates[0], bad]), out, progress=False)
    assert "\n" not in str(e.value) and str(bad / "model.safetensors") in str(e.value)
    _no_output(out)


def test_header_length_beyond_file(tiny_candidates, tmp_path):
    bad = shutil.copytree(tiny_candidates[1], tmp_path / "bad")
    f = bad / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes(struct.pack("<Q", len(raw)) + raw[8:])
    with pytest.raises(CheckpointError, match="header of .* bytes"):
        read_safetensors_header(f)


def test_cli_prints_one_line_not_a_traceback(tiny_base, tiny_candidates, tmp_path):
    bad = shutil.copytree(tiny_candidates[1], tmp_path / "bad")
    _rewrite_header(bad / "model.safetensors", _missing_key)
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(json.dumps(_cfg(tiny_base, [tiny_candidates[0], bad])))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "h3ops.cli", "merge", str(cfg), str(tmp_path / "out"),
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr and "model.norm.weight" in lines[0], proc.stderr
    _no_output(tmp_path / "out")
