"""mergekit's per-tensor features: gradients, filters and slerp, against mergekit 0.1.5's own output.

tests/data/mergekit_reference.json holds fingerprints (sum, sum of squares, first and last value)
of every tensor mergekit 0.1.5 wrote for the configs in bench/mergekit_agreement.py, on the tiny
checkpoints that script builds (seeded); `--record` refreshes it from a mergekit venv.
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from merging import MergeConfigError, merge
from merging.method import TensorTask, get_method
from merging.settings import evaluate, positions

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = json.loads((ROOT / "tests" / "data" / "mergekit_reference.json").read_text())
_spec = importlib.util.spec_from_file_location("mergekit_agreement", ROOT / "bench" / "mergekit_agreement.py")
agreement = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(agreement)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("mk")
    base, cands = agreement.build(root)
    for folder in [base, *cands]:
        got = {k: agreement.fingerprint(v) for k, v in agreement.load(Path(folder)).items()}
        want = REFERENCE["inputs"][Path(folder).name]
        assert got.keys() == want.keys()
        for k in got:  # the same inputs mergekit saw, or the comparison means nothing
            assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-9), f"input {folder}:{k} drifted; rerun --record"
    return base, cands


@pytest.mark.parametrize("name", sorted(agreement.CONFIGS))
def test_same_output_as_mergekit(models, name, tmp_path):
    base, cands = models
    out = merge(agreement.CONFIGS[name](base, cands), tmp_path / name, progress=False)
    ours = agreement.load(out)
    want = REFERENCE["outputs"][name]
    assert ours.keys() == want.keys()
    for k, v in ours.items():
        assert agreement.fingerprint(v) == pytest.approx(want[k], rel=1e-5, abs=1e-6), k


def test_gradient_and_filter_evaluation_follows_mergekit():
    names = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.3.self_attn.q_proj.weight",
             "model.norm.weight", "lm_head.weight"]
    t = positions(names)
    assert t == {names[0]: 0.0, names[1]: 0.0, names[2]: 1.0, names[3]: 0.0, names[4]: 0.0}
    assert evaluate([0, 0.5, 1], "x", 0.25) == pytest.approx(0.25)
    assert evaluate([1, 0.7, 0.1], "x", 0.75) == pytest.approx(0.4)
    assert evaluate(["a", "b", "c"], "x", 0.9) == "b"  # discrete values pick, never interpolate
    setting = [{"filter": "self_attn", "value": [0, 1]}, {"filter": "mlp", "value": 0.3}, {"value": 0.5}]
    assert evaluate(setting, names[2], 1.0) == 1.0
    assert evaluate(setting, names[1], 0.0) == 0.3
    assert evaluate(setting, names[3], 0.0) == 0.5


def test_slerp_by_hand():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])  # orthogonal: θ = π/2
    task = TensorTask("w", a, [b], {"t": 0.5, "dot_threshold": 0.9995, "eps": 1e-8}, [{}])
    s = math.sin(math.pi / 4)
    assert torch.allclose(get_method("slerp").fn(task), torch.tensor([[s, 2 * s]]))
    parallel = TensorTask("w", a, [3 * a], {"t": 0.25, "dot_threshold": 0.9995, "eps": 1e-8}, [{}])
    assert torch.allclose(get_method("slerp").fn(parallel), torch.tensor([[1.5, 0.0]]))  # linear fallback


@pytest.mark.parametrize("params,message", [
    ({"t": []}, "parameters.t: an empty list is not a parameter value"),
    ({"t": [{"filtr": "mlp", "value": 1}]}, "parameters.t[0]: a filter entry has keys"),
    ({"t": [0, "x"]}, "parameter 't' must be float, got str 'x'"),
    ({"t": [[0, 1], {"value": 1}]}, "got a mix"),
])
def test_bad_per_tensor_settings_are_named(models, tmp_path, params, message):
    base, cands = models
    cfg = {"merge_method": "slerp", "base_model": base, "models": [{"model": base}, {"model": cands[0]}],
           "parameters": params}
    with pytest.raises(MergeConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        merge(cfg, tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_slerp_takes_exactly_one_model_besides_the_base(models, tmp_path):
    base, cands = models
    cfg = {"merge_method": "slerp", "base_model": base, "models": [{"model": c} for c in cands[:2]],
           "parameters": {"t": 0.5}}
    with pytest.raises(MergeConfigError, match="exactly one other model, got 2"):
        merge(cfg, tmp_path / "o", progress=False)


def test_per_tensor_settings_recorded_in_lineage(models, tmp_path):
    from h3ops.checkpoint import read_manifest

    base, cands = models
    cfg = agreement.CONFIGS["slerp_gradient_filters"](base, cands)
    out = merge(cfg, tmp_path / "o", progress=False)
    assert read_manifest(out).parameters["per_tensor"]["global"]["t"] == cfg["parameters"]["t"]


def test_frankenmerge_loads_with_its_own_layer_count(models, tmp_path):
    from transformers import AutoModelForCausalLM

    base, cands = models
    out = merge(agreement.CONFIGS["passthrough_frankenmerge"](base, cands), tmp_path / "fm", progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 6 and len(model.model.layers) == 6
    # Output layer 3 is cand1's layer 1 (the second slice starts at its layer 1).
    src = agreement.load(Path(cands[1]))["model.layers.1.mlp.up_proj.weight"]
    assert torch.equal(model.model.layers[3].mlp.up_proj.weight.double(), src)


@pytest.mark.parametrize("edit,message", [
    (lambda b, c: [{"sources": [{"model": c[0], "layer_range": [0, 9]}]}], r"has no layer 4 \(layer_range \[0, 9\]\)"),
    (lambda b, c: [{"sources": [{"model": c[0], "layer_range": [0, 2]}, {"model": c[1], "layer_range": [0, 3]}]}],
     r"slices\[0\]: every source of a slice spans the same number of layers, got \[2, 3\]"),
    (lambda b, c: [{"sources": [{"model": c[0], "layer_range": [2, 1]}]}], r"layer_range must be \[start, end\]"),
    (lambda b, c: [{"sources": [{"model": c[0], "layer_range": [0, 2]}, {"model": c[1], "layer_range": [0, 2]}]}],
     r"slices\[0\]: merge_method passthrough: takes exactly one input per tensor, got 2"),
    (lambda b, c: [{"sources": [{"model": c[0], "layer_range": [0, 2]}], "weights": 1}],
     r"slices\[0\]: unknown key\(s\) \['weights'\]"),
])
def test_bad_slices_are_named_before_any_write(models, tmp_path, edit, message):
    base, cands = models
    with pytest.raises(MergeConfigError, match=message):
        merge({"merge_method": "passthrough", "slices": edit(base, cands)}, tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_task_vector_slices_need_the_base_in_every_slice(models, tmp_path):
    base, cands = models
    cfg = {"merge_method": "ties", "base_model": base,
           "slices": [{"sources": [{"model": c, "layer_range": [0, 4], "parameters": {"density": 0.5}} for c in cands]}]}
    with pytest.raises(MergeConfigError, match=r"slices\[0\]: merge_method ties needs base_model among the sources"):
        merge(cfg, tmp_path / "o", progress=False)
