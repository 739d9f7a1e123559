"""The merge engine: invariants, the checkpoint it writes, mergekit configs, and bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from h3ops.checkpoint import CheckpointError, read_manifest, weight_files
from h3ops.digest import digest_dir
from merging import MergeConfigError, merge
from merging.engine import MergeError

TASK_VECTOR_METHODS = ["task_arithmetic", "ties", "dare_linear", "dare_ties", "della_linear", "della",
                       "breadcrumbs", "breadcrumbs_ties"]


def _load(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in weight_files(folder):
        out.update(load_file(f))
    return out


def _cfg(method, base, cands, density=0.5, **global_params):
    params = {} if method in ("linear", "rewarded_soup", "task_arithmetic", "model_stock") else {"density": density}
    return {"merge_method": method, "base_model": str(base),
            "models": [{"model": str(c), "parameters": dict(params)} for c in cands], "parameters": global_params}


def _no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")], "temp folder left behind"


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy a checkpoint folder and rewrite its tensors through `edit(dict) -> dict`."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    save_file(edit(_load(src)), dst / "model.safetensors", metadata={"format": "pt"})
    return dst


# ---- what a merge writes ------------------------------------------------------------------------

def test_output_is_a_complete_checkpoint_with_lineage(tiny_base, tiny_candidates, tmp_path):
    out = merge(_cfg("ties", tiny_base, tiny_candidates), tmp_path / "merged", seed=11, progress=False)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "h3ops.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert "lm_head.weight" not in _load(out)  # tied embeddings stay tied
    m = read_manifest(out)
    assert (m.kind, m.produced_by, m.method, m.seed) == ("merged", "h3ops.merge", "ties", 11)
    assert [p["digest"] for p in m.parents] == [digest_dir(p) for p in [tiny_base, *tiny_candidates]]
    assert m.parameters["models"][0]["density"] == 0.5
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|im_end|>"


def test_same_output_for_threads_tensor_order_and_shard_layout(tiny_base, tiny_candidates, tmp_path):
    cfg = _cfg("dare_ties", tiny_base, tiny_candidates, density=0.4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = merge(cfg, tmp_path / "t1", seed=5, progress=False)
        torch.set_num_threads(2)
        two = merge(cfg, tmp_path / "t2", seed=5, progress=False)
    finally:
        torch.set_num_threads(threads)
    reference = (one / "model.safetensors").read_bytes()
    assert (two / "model.safetensors").read_bytes() == reference
    # The same candidates, stored with their tensors in reverse order and in several shards.
    reordered = []
    for i, c in enumerate(tiny_candidates):
        dst = tmp_path / f"re{i}"
        shutil.copytree(c, dst, ignore=shutil.ignore_patterns("*.safetensors"))
        tensors = _load(c)
        keys = sorted(tensors, reverse=True)
        half = len(keys) // 2
        shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
        for fname, ks in shards.items():
            save_file({k: tensors[k] for k in ks}, dst / fname, metadata={"format": "pt"})
        (dst / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}))
        reordered.append(dst)
    three = merge(_cfg("dare_ties", tiny_base, reordered, density=0.4), tmp_path / "t3", seed=5, progress=False)
    assert (three / "model.safetensors").read_bytes() == reference
    # Sharded output: same tensors, split with an index.
    sharded = merge(cfg, tmp_path / "t4", seed=5, max_shard_size="40KB", progress=False)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and all(f.stat().st_size <= 40_000 or len(load_file(f)) == 1
                                  for f in (sharded / n for n in files))
    a, b = _load(one), _load(sharded)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # A different seed gives a different DARE model.
    other = merge(cfg, tmp_path / "t5", seed=6, progress=False)
    assert (other / "model.safetensors").read_bytes() != reference


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "rewarded_soup"])
def test_blockwise_streaming_is_bit_identical_to_whole_tensors(method, tiny_base, tiny_candidates, tmp_path,
                                                               monkeypatch):
    """Elementwise methods stream large tensors in blocks; any block size gives the same bytes."""
    import merging.engine as engine

    cfg = _cfg(method, tiny_base, tiny_candidates)
    if method == "task_arithmetic":
        cfg["parameters"] = {"lambda": 0.7, "normalize": True}
        cfg["models"][1]["parameters"] = {"weight": 0.3}
    whole = merge(cfg, tmp_path / "whole", diagnostics=True, progress=False)  # diagnostics: whole tensors
    for block in (7, 1000):  # 7: a ragged last block in every tensor
        monkeypatch.setattr(engine, "BLOCK", block)
        out = merge(cfg, tmp_path / f"b{block}", progress=False)
        assert (out / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()


def test_blockwise_nan_is_named_and_leaves_nothing(tiny_base, tiny_candidates, tmp_path, monkeypatch):
    import merging.engine as engine

    def poison(t):
        w = t["model.layers.1.self_attn.o_proj.weight"].clone()
        w[-1, -1] = float("inf")
        return {**t, "model.layers.1.self_attn.o_proj.weight": w}

    bad = _rewrite(tiny_candidates[1], tmp_path / "bad", poison)
    monkeypatch.setattr(engine, "BLOCK", 64)
    out = tmp_path / "out"
    with pytest.raises(MergeError, match=r"o_proj.weight' in .*bad: 1 non-finite"):
        merge(_cfg("linear", tiny_base, [tiny_candidates[0], bad]), out, progress=False)
    _no_leftovers(out)


def test_sharded_bf16_inputs(tmp_path):
    from h3ops.testing import make_candidate, make_tiny_llama

    base = make_tiny_llama(tmp_path / "b", dtype="bfloat16", max_shard_size="30KB", tie_embeddings=False)
    assert (base / "model.safetensors.index.json").is_file()
    cands = [make_candidate(base, tmp_path / f"c{i}", seed=i) for i in range(2)]
    out = merge(_cfg("task_arithmetic", base, cands), tmp_path / "o", progress=False)
    merged, b, cs = _load(out), _load(base), [_load(c) for c in cands]
    assert "lm_head.weight" in merged and merged["lm_head.weight"].dtype == torch.bfloat16
    for k in merged:
        ref = b[k].float() + sum(c[k].float() - b[k].float() for c in cs)
        assert torch.equal(merged[k], ref.to(torch.bfloat16))


@pytest.mark.parametrize("method", TASK_VECTOR_METHODS)
def test_candidate_equal_to_base_gives_the_base(method, tiny_base, tmp_path):
    same = tmp_path / "same"
    shutil.copytree(tiny_base, same)
    out = merge(_cfg(method, tiny_base, [same]), tmp_path / "o", progress=False)
    assert (out / "model.safetensors").read_bytes() == (tiny_base / "model.safetensors").read_bytes()


def test_integer_buffers_copied_or_refused(tiny_base, tiny_candidates, tmp_path):
    def add(value):
        return lambda t: {**t, "model.position_ids": torch.arange(8) * value}

    base = _rewrite(tiny_base, tmp_path / "b", add(1))
    ok = [_rewrite(c, tmp_path / f"c{i}", add(1)) for i, c in enumerate(tiny_candidates[:2])]
    out = merge(_cfg("linear", base, ok), tmp_path / "o", progress=False)
    assert torch.equal(_load(out)["model.position_ids"], torch.arange(8))
    bad = _rewrite(tiny_candidates[2], tmp_path / "c2", add(2))
    with pytest.raises(MergeError, match="model.position_ids.*differs"):
        merge(_cfg("linear", base, [*ok, bad]), tmp_path / "o2", progress=False)
    _no_leftovers(tmp_path / "o2")


# ---- mergekit configs and the CLI ---------------------------------------------------------------

MERGEKIT_YAML = """\
models:
  - model: {base}
  - model: {c0}
    parameters:
      density: 0.6
      weight: 0.5
  - model: {c1}
    parameters:
      density: 0.4
      weight: 0.5
merge_method: ties
base_model: {base}
parameters:
  normalize: true
  int8_mask: true
dtype: float32
out_dtype: bfloat16
tokenizer_source: base
"""


def test_mergekit_yaml_runs_through_the_cli(tiny_base, tiny_candidates, tmp_path, capsys):
    from h3ops.cli import main

    cfg = tmp_path / "ties.yaml"
    cfg.write_text(MERGEKIT_YAML.format(base=tiny_base, c0=tiny_candidates[0], c1=tiny_candidates[1]))
    assert main(["merge", str(cfg), str(tmp_path / "out"), "--seed", "3", "--no-progress"]) == 0
    assert "ties of 2 model(s)" in capsys.readouterr().err  # the base listed in models is not a candidate
    merged = _load(tmp_path / "out")
    assert all(v.dtype == torch.bfloat16 for v in merged.values())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    assert read_manifest(tmp_path / "out").seed == 3
    # The output exists now: refused without --overwrite, replaced with it.
    assert main(["merge", str(cfg), str(tmp_path / "out"), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["merge", str(cfg), str(tmp_path / "out"), "--no-progress", "--overwrite", "--seed", "4"]) == 0
    assert read_manifest(tmp_path / "out").seed == 4


def test_dare_rescale_accepts_mergekit_booleans(tiny_base, tiny_candidates, tmp_path):
    a = merge(_cfg("dare_linear", tiny_base, tiny_candidates, rescale=True), tmp_path / "a", progress=False)
    b = merge(_cfg("dare_linear", tiny_base, tiny_candidates, rescale="l1"), tmp_path / "b", progress=False)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


# ---- bad input: a clear message and no output folder --------------------------------------------

@pytest.mark.parametrize("edit,kind,message", [
    ("shape", MergeError, r"model.norm.weight.*shape \[63\]"),
    ("missing", MergeError, r"missing tensor\(s\) \['model.norm.weight'\]"),
    ("nan", MergeError, r"model.layers.0.mlp.up_proj.weight.*non-finite"),
    ("truncated", CheckpointError, "truncated"),
    ("pickle", CheckpointError, "pickle"),
])
def test_bad_checkpoint_is_refused(edit, kind, message, tiny_base, tiny_candidates, tmp_path):
    bad = tmp_path / "bad"
    if edit == "shape":
        _rewrite(tiny_candidates[1], bad, lambda t: {**t, "model.norm.weight": t["model.norm.weight"][:63]})
    elif edit == "missing":
        _rewrite(tiny_candidates[1], bad, lambda t: {k: v for k, v in t.items() if k != "model.norm.weight"})
    elif edit == "nan":
        def poison(t):
            w = t["model.layers.0.mlp.up_proj.weight"].clone()
            w[3, 5] = float("nan")
            return {**t, "model.layers.0.mlp.up_proj.weight": w}
        _rewrite(tiny_candidates[1], bad, poison)
    elif edit == "truncated":
        shutil.copytree(tiny_candidates[1], bad)
        f = bad / "model.safetensors"
        f.write_bytes(f.read_bytes()[:-1000])
    else:
        shutil.copytree(tiny_candidates[1], bad, ignore=shutil.ignore_patterns("*.safetensors"))
        torch.save(_load(tiny_candidates[1]), bad / "pytorch_model.bin")
    out = tmp_path / "out"
    with pytest.raises(kind, match=message):
        merge(_cfg("ties", tiny_base, [tiny_candidates[0], bad]), out, progress=False)
    _no_leftovers(out)
    if edit == "pickle":  # an explicit opt-in reads it
        merge(_cfg("ties", tiny_base, [tiny_candidates[0], bad]), out, allow_pickle=True, progress=False)
        assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("change,message", [
    ({"merge_method": "tiess"}, r"unknown merge_method 'tiess'.*available"),
    ({"parameters": {"density": "high"}}, r"'density' must be float, got str"),
    ({"parameters": {"normalise": True}}, r"unknown parameter\(s\) \['normalise'\]"),
    ({"slices": []}, r"give either 'models' or 'slices', not both"),
    ({"layer_rangee": []}, r"unknown config key\(s\) \['layer_rangee'\]"),
    ({"parameters": {"rescale": "l2"}}, r"'rescale' must be one of"),
    ({"merge_method": "della", "parameters": {"epsilon": 0.6}}, "density \+ epsilon <= 1"),
    ({"base_model": "meta-llama/Llama-3-8B"}, "Hugging Face Hub id"),
    ({"base_model": "s3://bucket/base"}, "fetch the checkpoint"),
    ({"out_dtype": "float8"}, "unknown dtype"),
])
def test_bad_config_is_refused_before_any_tensor_is_read(change, message, tiny_base, tiny_candidates, tmp_path,
                                                         monkeypatch):
    import merging.io

    def never(*a, **k):
        raise AssertionError("a tensor was read")
    monkeypatch.setattr(merging.io.CheckpointReader, "get", never)
    cfg = {**_cfg("dare_ties", tiny_base, tiny_candidates), **change}
    out = tmp_path / "out"
    with pytest.raises(MergeConfigError, match=message):
        merge(cfg, out, progress=False)
    _no_leftovers(out)


def test_existing_output_is_refused(tiny_base, tiny_candidates, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        merge(_cfg("linear", tiny_base, tiny_candidates), out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
