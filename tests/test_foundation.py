"""The checkpoint contract, digests and the CLI dispatch."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from h3ops.checkpoint import CheckpointError, Manifest, atomic_output_dir, read_manifest, weight_files
from h3ops.digest import digest_dir, digest_json


def test_tiny_base_is_a_real_hf_checkpoint(tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    tok = AutoTokenizer.from_pretrained(tiny_base)
    text = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    batch = tok(text, return_tensors="pt")
    assert model(**batch).logits.shape[-1] == len(tok)
    assert read_manifest(tiny_base).kind == "base"
    assert weight_files(tiny_base)[0].name == "model.safetensors"


def test_candidate_records_its_parent(tiny_base, tiny_candidates):
    m = Manifest.read(tiny_candidates[0])
    assert m.kind == "candidate" and m.parents[0]["digest"] == digest_dir(tiny_base)
    assert digest_dir(tiny_candidates[0]) != digest_dir(tiny_base)


def test_pickle_checkpoint_refused_unless_allowed(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(CheckpointError, match="pickle"):
        weight_files(tmp_path)
    assert weight_files(tmp_path, allow_pickle=True)[0].name == "pytorch_model.bin"


def test_index_naming_a_missing_shard_is_an_error(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="missing shard"):
        weight_files(tmp_path)


def test_atomic_output_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "half.safetensors").write_bytes(b"x")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    with atomic_output_dir(out) as tmp:
        (tmp / "done").write_text("1")
    assert (out / "done").read_text() == "1"
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_output_dir(out):
            pass


def test_digest_json_ignores_key_order():
    assert digest_json({"a": 1, "b": [1, 2]}) == digest_json({"b": [1, 2], "a": 1})
    assert digest_json({"a": 1}) != digest_json({"a": 2})


def test_cli_lists_commands_and_rejects_unknown():
    ok = subprocess.run([sys.executable, "-m", "h3ops.cli", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "merge" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "h3ops.cli", "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr
