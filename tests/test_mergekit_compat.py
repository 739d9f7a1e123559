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


@pytest.mark.parametrize("value,expected", [
    ("chatml", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
    ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}", "<user>hi"),
])
def test_chat_template_is_the_merged_tokenizers(models, tmp_path, value, expected):
    from transformers import AutoTokenizer

    base, cands = models
    cfg = {**agreement.CONFIGS["karcher"](base, cands), "chat_template": value}
    out = merge(cfg, tmp_path / "o", progress=False)
    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == expected


def test_chat_template_auto_takes_the_inputs_shared_one(models, tmp_path):
    from transformers import AutoTokenizer

    base, cands = models
    want = AutoTokenizer.from_pretrained(cands[0]).apply_chat_template([{"role": "user", "content": "hi"}],
                                                                       tokenize=False)
    out = merge({**agreement.CONFIGS["karcher"](base, cands), "chat_template": "auto"}, tmp_path / "o", progress=False)
    got = AutoTokenizer.from_pretrained(out).apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert got == want


def test_unknown_chat_template_is_refused_before_any_write(models, tmp_path):
    base, cands = models
    with pytest.raises(MergeConfigError, match="chat_template 'chatmel': not a known name"):
        merge({**agreement.CONFIGS["karcher"](base, cands), "chat_template": "chatmel"}, tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


# --- vocabulary building: tokenizer_source and the tokenizer: section ---------------------------------------

@pytest.fixture(scope="module")
def vocab_models(tmp_path_factory):
    models = agreement.build_vocab_models(tmp_path_factory.mktemp("mkv"))
    for folder in models.values():
        got = {k: agreement.fingerprint(v) for k, v in agreement.load(Path(folder)).items()}
        want = REFERENCE["inputs"][Path(folder).name]
        for k in got:
            assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-9), f"input {folder}:{k} drifted; rerun --record"
    return models


@pytest.mark.parametrize("name", sorted(agreement.VOCAB_CONFIGS))
def test_vocabulary_building_matches_mergekit(vocab_models, name, tmp_path):
    from transformers import AutoTokenizer

    cfg = agreement.VOCAB_CONFIGS[name](vocab_models)
    out = merge(cfg, tmp_path / name, progress=False)
    want = REFERENCE["vocabularies"][name]
    tok = AutoTokenizer.from_pretrained(out)
    vocab = tok.get_vocab()
    if (cfg.get("tokenizer_source") or cfg["tokenizer"]["source"]) == "union":
        # mergekit appends a union's new tokens in hash order (it varies from run to run): the same
        # tokens, the base's at the base's ids, the new ones after them.
        base = AutoTokenizer.from_pretrained(vocab_models["base"]).get_vocab()
        assert vocab.keys() == want["vocab"].keys() and all(vocab[t] == want["vocab"][t] for t in base)
    else:
        assert vocab == want["vocab"]
        assert tok(agreement.SAMPLE)["input_ids"] == want["ids"]
    assert tok.tokenize(agreement.SAMPLE) == want["tokens"]
    assert json.loads((out / "config.json").read_text())["vocab_size"] == want["vocab_size"]
    ours = agreement.load(out)
    assert ours.keys() == REFERENCE["outputs"][name].keys()
    for k, v in ours.items():
        got = agreement.fingerprint(agreement.by_token(k, v, vocab))
        assert got == pytest.approx(REFERENCE["outputs"][name][k], rel=1e-5, abs=1e-6), k


def test_union_keeps_the_base_ids_and_appends_in_model_order(vocab_models, tmp_path):
    from transformers import AutoTokenizer

    v = vocab_models
    out = merge(agreement.VOCAB_CONFIGS["vocab_union_task_arithmetic"](v), tmp_path / "u", progress=False)
    merged = AutoTokenizer.from_pretrained(out).get_vocab()
    base, wide, plus = (AutoTokenizer.from_pretrained(v[k]).get_vocab() for k in ("base", "wide", "plus"))
    assert all(merged[t] == i for t, i in base.items())
    new = sorted((i, t) for t, i in merged.items() if t not in base)
    wide_new = sorted((i, t) for t, i in wide.items() if t not in base and t != "<|tool|>")
    # wide's vocabulary tokens by id, then the models' added tokens (special or not), by model and id.
    assert [t for _, t in new] == [t for _, t in wide_new] + ["<|tool|>", "<|sep|>", "h3ops", "merge_me"]
    assert len(merged) == len(set(base) | set(wide) | set(plus))
    # The merged model loads and runs on text that uses every model's tokens.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    ids = AutoTokenizer.from_pretrained(out)(agreement.SAMPLE, return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape[-1] == len(merged)


def _vocab(perm: dict, base=None, overrides=None, rows=None, size=None):
    from merging.vocab import Vocab

    n = len(next(iter(perm.values())))
    perm = {k: torch.tensor(v) for k, v in perm.items()}
    return Vocab(None, None, n, size or n, perm, base, overrides or {}, rows or {}, False)


def test_default_rows_follow_mergekits_rules():
    """Base b, models x and y; tokens: 0 everyone, 1 only x, 2 x and y (not b), 3 nobody."""
    b, x, y = Path("b"), Path("x"), Path("y")
    voc = _vocab({b: [0, -1, -1, -1], x: [1, 0, 2, -1], y: [0, -1, 1, -1]}, base=b)
    tb, tx, ty = torch.tensor([[1.0, 1]]), torch.tensor([[10.0, 0], [20, 0], [30, 0]]), torch.tensor([[5.0, 5], [7, 7]])
    rb, rx, ry = voc.reindex("model.embed_tokens.weight", [b, x, y], [tb, tx, ty])
    assert rb.tolist() == [[1, 1], [10, 0], [18.5, 3.5], [0, 0]]  # own; the only donor; the mean; zeros
    assert rx.tolist() == [[20, 0], [10, 0], [30, 0], [0, 0]]  # a model keeps every row it has
    assert ry.tolist() == [[5, 5], [10, 0], [7, 7], [0, 0]]


def test_configured_tokens_force_and_padding():
    from merging.vocab import TokenSource

    b, x = Path("b"), Path("x")
    overrides = {0: TokenSource("model", x, "x", force=True), 1: TokenSource("zero"),
                 2: TokenSource("model_token", b, "b", token_id=0)}
    voc = _vocab({b: [0, 1, -1], x: [1, 0, -1]}, base=b, overrides=overrides, rows={0: (x, 1), 2: (b, 0)}, size=4)
    rb, rx = voc.reindex("lm_head.weight", [b, x], [torch.tensor([[1.0], [2]]), torch.tensor([[3.0], [4]])])
    assert rb[:3].tolist() == [[4], [2], [1]]  # forced; kept (zero is only a default); model_token
    assert rx[:3].tolist() == [[4], [3], [1]]
    assert rb[3].item() == pytest.approx(7 / 3) and rx[3].item() == pytest.approx(8 / 3)  # padding: the mean row


@pytest.mark.parametrize("edit,message", [
    (lambda c, v: {**c, "tokenizer": {"source": "union"}}, "give either tokenizer_source or a tokenizer: section"),
    (lambda c, v: {**{k: c[k] for k in c if k != "tokenizer_source"}, "tokenizer": {"sorce": "union"}},
     r"tokenizer: unknown key\(s\) \['sorce'\]"),
    (lambda c, v: {**c, "tokenizer_source": "unoin"}, "tokenizer_source: base, union or a model; model 'unoin'"),
    (lambda c, v: {**{k: c[k] for k in c if k != "tokenizer_source"},
                   "tokenizer": {"pad_to_multiple_of": 0}}, "pad_to_multiple_of must be a positive integer"),
    (lambda c, v: {**{k: c[k] for k in c if k != "tokenizer_source"},
                   "tokenizer": {"tokens": {"<x>": {"source": {"kind": "model_token", "model": v["wide"]}}}}},
     "exactly one of token or token_id"),
    (lambda c, v: {**{k: c[k] for k in c if k != "tokenizer_source"},
                   "tokenizer": {"tokens": {"<x>": {"source": v["other"]}}}}, "is not one of the merge's inputs"),
    (lambda c, v: {**{k: c[k] for k in c if k != "tokenizer_source"},
                   "tokenizer": {"tokens": {"<x>": {"source": v["wide"]}}}}, "has no token '<x>'"),
    (lambda c, v: {**{k: c[k] for k in c if k != "tokenizer_source"}, "tokenizer": {"tokens": {
        "<x>": {"source": {"kind": "model_token", "model": v["wide"], "token_id": 10 ** 6}}}}}, "out of range"),
])
def test_bad_vocabulary_settings_are_named_before_any_write(vocab_models, models, tmp_path, edit, message):
    v = {**vocab_models, "other": models[0]}
    cfg = edit(agreement.VOCAB_CONFIGS["vocab_union_task_arithmetic"](vocab_models), v)
    with pytest.raises(MergeConfigError, match=message):
        merge(cfg, tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_zero_and_unsourced_tokens(vocab_models, tmp_path):
    """mergekit 0.1.5 fails on this config (tokens the base lacks under `source: base`, a token without
    a source that no model has), so there is no reference: zero rows, and the automatic default (zeros)."""
    v = vocab_models
    cfg = {"merge_method": "linear", "dtype": "float32",
           "models": [{"model": v["base"], "parameters": {"weight": 1.0}}],
           "tokenizer": {"source": "base", "tokens": {"<|zero|>": {"source": {"kind": "zero"}}, "<|auto|>": {},
                                                      "<|im_end|>": {"source": {"kind": "zero"}, "force": True}}}}
    out = merge(cfg, tmp_path / "z", progress=False)
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(out).get_vocab()
    emb = agreement.load(out)["model.embed_tokens.weight"]
    src = agreement.load(Path(v["base"]))["model.embed_tokens.weight"]
    assert emb.shape[0] == len(vocab) == src.shape[0] + 2
    assert not emb[vocab["<|zero|>"]].any() and not emb[vocab["<|auto|>"]].any() and not emb[vocab["<|im_end|>"]].any()
    assert torch.equal(emb[: src.shape[0]][torch.arange(src.shape[0]) != vocab["<|im_end|>"]],
                       src[torch.arange(src.shape[0]) != vocab["<|im_end|>"]])


def test_tokens_beyond_the_models_vocab_size_are_refused_by_name(vocab_models, tmp_path):
    import shutil

    v = dict(vocab_models)
    v["plus"] = str(shutil.copytree(v["plus"], tmp_path / "plus"))
    conf = Path(v["plus"]) / "config.json"
    conf.write_text(json.dumps({**json.loads(conf.read_text()), "vocab_size": 300}))
    with pytest.raises(MergeConfigError, match="ids beyond the model's vocab_size 300.*h3ops does not yet"):
        merge(agreement.VOCAB_CONFIGS["vocab_union_task_arithmetic"](v), tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
