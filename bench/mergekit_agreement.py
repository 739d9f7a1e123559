"""Agreement with mergekit 0.1.5 on configs that use its per-tensor features (gradients, filters, slerp)
and its vocabulary building (tokenizer_source, tokenizer:).

    python bench/mergekit_agreement.py --mergekit /work/bench-venvs/mergekit --out /tmp/mkcmp
    python bench/mergekit_agreement.py --record tests/data/mergekit_reference.json   # refresh the test's reference

Builds tiny float32 Llama checkpoints (4 layers; 2 for the vocabulary cases, with different
tokenizers), writes each config below, runs `mergekit-yaml`
(from its own venv, never a project dependency) and `h3ops merge` on it, and prints the largest
absolute difference per config. The results are recorded in bench/README.md ("mergekit agreement").
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    "slerp_gradient_filters": lambda b, c: {
        "merge_method": "slerp", "base_model": b, "models": [{"model": b}, {"model": c[0]}],
        "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                             {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]},
        "dtype": "float32"},
    "slerp_scalar": lambda b, c: {
        "merge_method": "slerp", "base_model": b, "models": [{"model": b}, {"model": c[1]}],
        "parameters": {"t": 0.3}, "dtype": "float32"},
    "ties_gradient_density": lambda b, c: {
        "merge_method": "ties", "base_model": b,
        "models": [{"model": m, "parameters": {"density": [1, 0.7, 0.1], "weight": 1.0}} for m in c],
        "parameters": {"normalize": True}, "dtype": "float32"},
    "task_arithmetic_filtered_weights": lambda b, c: {
        "merge_method": "task_arithmetic", "base_model": b,
        "models": [{"model": m, "parameters": {"weight": [{"filter": "mlp", "value": [0.2, 0.8]},
                                                          {"filter": "embed", "value": 0.1}, {"value": 0.5}]}}
                   for m in c], "dtype": "float32"},
    "passthrough_frankenmerge": lambda b, c: {
        "merge_method": "passthrough", "dtype": "float32",
        "slices": [{"sources": [{"model": c[0], "layer_range": [0, 3]}]},
                   {"sources": [{"model": c[1], "layer_range": [1, 4]}]}]},
    "passthrough_scaled_by_filter": lambda b, c: {
        "merge_method": "passthrough", "dtype": "float32",
        "slices": [{"sources": [{"model": c[0], "layer_range": [0, 2]}]},
                   {"sources": [{"model": c[2], "layer_range": [2, 4],
                                 "parameters": {"scale": [{"filter": "o_proj", "value": 0.0},
                                                          {"filter": "down_proj", "value": [1, 0.5]},
                                                          {"value": 1.0}]}}]}]},
    "slices_slerp_gradient": lambda b, c: {
        "merge_method": "slerp", "base_model": b, "dtype": "float32",
        "slices": [{"sources": [{"model": b, "layer_range": [0, 4]}, {"model": c[0], "layer_range": [0, 4]}]}],
        "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                             {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]}},
    "slices_ties_per_slice": lambda b, c: {
        "merge_method": "ties", "base_model": b, "dtype": "float32", "parameters": {"normalize": True},
        "slices": [{"sources": [{"model": b, "layer_range": [0, 2]},
                                {"model": c[0], "layer_range": [0, 2], "parameters": {"density": 0.5, "weight": 1.0}},
                                {"model": c[1], "layer_range": [0, 2], "parameters": {"density": 0.7, "weight": 0.5}}]},
                   {"sources": [{"model": b, "layer_range": [2, 4]},
                                {"model": c[1], "layer_range": [2, 4], "parameters": {"weight": 1.0}},
                                {"model": c[2], "layer_range": [2, 4], "parameters": {"weight": [0.2, 1.0]}}],
                    "parameters": {"density": 0.4}}]},
    "nuslerp_with_base": lambda b, c: {
        "merge_method": "nuslerp", "base_model": b, "dtype": "float32",
        "models": [{"model": c[0], "parameters": {"weight": 0.7}}, {"model": c[1], "parameters": {"weight": 0.3}}]},
    "nuslerp_row_wise_no_base": lambda b, c: {
        "merge_method": "nuslerp", "dtype": "float32",
        "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True},
        "models": [{"model": c[0], "parameters": {"weight": 1.0}}, {"model": c[2], "parameters": {"weight": 2.0}}]},
    "multislerp_with_base": lambda b, c: {
        "merge_method": "multislerp", "base_model": b, "dtype": "float32",
        "models": [{"model": m, "parameters": {"weight": w}} for m, w in zip(c, [0.5, 0.3, 0.2])]},
    "karcher": lambda b, c: {
        "merge_method": "karcher", "dtype": "float32", "models": [{"model": m} for m in c]},
    "sce_topk": lambda b, c: {
        "merge_method": "sce", "base_model": b, "dtype": "float32", "parameters": {"select_topk": 0.5},
        "models": [{"model": m} for m in c]},
    "arcee_fusion": lambda b, c: {
        "merge_method": "arcee_fusion", "base_model": b, "dtype": "float32", "models": [{"model": b}, {"model": c[0]}]},
    "nearswap": lambda b, c: {
        "merge_method": "nearswap", "base_model": b, "dtype": "float32", "parameters": {"t": 0.001},
        "models": [{"model": b}, {"model": c[1]}]},
    "linear_gradient_weights": lambda b, c: {
        "merge_method": "linear",
        "models": [{"model": c[0], "parameters": {"weight": [1, 0]}},
                   {"model": c[1], "parameters": {"weight": [0, 1]}}], "dtype": "float32"},
}

# Vocabulary building (tokenizer_source / tokenizer:), on tiny models whose tokenizers differ: "base"
# (the default BPE), "wide" (trained on more text: other ids for shared tokens, more tokens, one
# special token) and "plus" (the default plus added special and plain tokens). Untied lm_head.
VOCAB_CONFIGS = {
    "vocab_union_task_arithmetic": lambda v: {
        "merge_method": "task_arithmetic", "base_model": v["base"], "dtype": "float32", "tokenizer_source": "union",
        "models": [{"model": v["wide"], "parameters": {"weight": 0.6}},
                   {"model": v["plus"], "parameters": {"weight": 0.4}}]},
    "vocab_base_ties": lambda v: {
        "merge_method": "ties", "base_model": v["base"], "dtype": "float32", "tokenizer_source": "base",
        "parameters": {"normalize": True},
        "models": [{"model": v["wide"], "parameters": {"density": 0.7, "weight": 1.0}},
                   {"model": v["plus"], "parameters": {"density": 0.5, "weight": 0.5}}]},
    "vocab_model_source_linear": lambda v: {
        "merge_method": "linear", "dtype": "float32", "tokenizer_source": v["wide"],
        "models": [{"model": v["wide"], "parameters": {"weight": 0.5}},
                   {"model": v["plus"], "parameters": {"weight": 0.5}}]},
    "vocab_section_slerp": lambda v: {
        "merge_method": "slerp", "base_model": v["base"], "dtype": "float32", "parameters": {"t": 0.4},
        "models": [{"model": v["base"]}, {"model": v["plus"]}],
        "tokenizer": {"source": "union", "pad_to_multiple_of": 16, "tokens": {
            "<|im_start|>": {"source": v["plus"], "force": True},
            "<|new|>": {"source": {"kind": "model_token", "model": v["plus"], "token": "h3ops"}},
            "<|tool|>": {"source": {"kind": "model_token", "model": v["base"], "token_id": 5}},
            "<|zero|>": {"source": {"kind": "zero"}}}}},
    "vocab_section_base_padded": lambda v: {
        "merge_method": "task_arithmetic", "base_model": v["base"], "dtype": "float32",
        "models": [{"model": v["wide"], "parameters": {"weight": 0.5}},
                   {"model": v["plus"], "parameters": {"weight": 0.5}}],
        # (a token the base lacks is not listed: mergekit 0.1.5 adds it to the base's own tokenizer
        # object and then fails with a KeyError; tests/test_mergekit_compat.py checks ours by hand)
        "tokenizer": {"source": "base", "pad_to_multiple_of": 64, "tokens": {
            "<|im_end|>": {"source": v["wide"], "force": True},
            "<|im_start|>": {"source": {"kind": "zero"}, "force": True},
            "Ġthe": {"source": {"kind": "model_token", "model": v["plus"], "token_id": 7}}}}},
    "vocab_union_frankenmerge": lambda v: {
        "merge_method": "passthrough", "base_model": v["base"], "dtype": "float32", "tokenizer_source": "union",
        "slices": [{"sources": [{"model": v["wide"], "layer_range": [0, 2]}]},
                   {"sources": [{"model": v["plus"], "layer_range": [1, 2]}]}]},
}
SAMPLE = "<|im_start|>user\nh3ops merge_me <|tool|> the quick brown fox<|sep|> Helpful answers<|im_end|>"
EXTRA_TEXT = ("Merging models with different vocabularies needs a shared tokenizer.",
              "Tokenizers split words into pieces; unions keep every piece of every model.")


def build_vocab_models(root: Path) -> dict[str, str]:
    from h3ops.testing import make_tiny_llama, make_tokenizer

    tokenizers = {"base": lambda: make_tokenizer(320),
                  "wide": lambda: make_tokenizer(360, extra_text=EXTRA_TEXT, special=("<|tool|>",)),
                  "plus": lambda: make_tokenizer(320, special=("<|tool|>", "<|sep|>"), added=("h3ops", "merge_me"))}
    out = {}
    for seed, (name, tok) in enumerate(tokenizers.items()):
        folder = root / f"vocab_{name}"
        if not folder.exists():
            make_tiny_llama(folder, layers=2, hidden=32, seed=10 + seed, tie_embeddings=False, tokenizer=tok())
        out[name] = str(folder)
    return out


def vocab_of(folder: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder).get_vocab()


def by_token(name: str, t, vocab: dict[str, int]):
    """An embedding's rows in token order (then any padding rows): comparable whatever ids the
    tokens got (mergekit appends a union's new tokens in hash order, which varies between runs)."""
    import torch

    if t.dim() != 2 or not any(k in name for k in ("embed_tokens", "lm_head")):
        return t
    order = [vocab[k] for k in sorted(vocab)] + list(range(len(vocab), t.shape[0]))
    return t[torch.tensor(order)]


def build(root: Path) -> tuple[str, list[str]]:
    from h3ops.testing import make_candidate, make_tiny_llama

    base = root / "base"
    if not base.exists():
        make_tiny_llama(base, layers=4, hidden=64)
    cands = []
    for i in range(3):
        c = root / f"cand{i}"
        if not c.exists():
            make_candidate(base, c, seed=i + 1, dimension=["helpfulness", "honesty", "harmlessness"][i])
        cands.append(str(c))
    return str(base), cands


def load(folder: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update({k: v.to(torch.float64) for k, v in load_file(f).items()})
    return out


def fingerprint(t) -> list[float]:
    """What the test compares: sum, sum of squares and the first and last values (float64)."""
    flat = t.reshape(-1)
    return [flat.sum().item(), (flat * flat).sum().item(), flat[0].item(), flat[-1].item()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mergekit", default="/work/bench-venvs/mergekit", help="venv with mergekit==0.1.5")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "mergekit_agreement")
    ap.add_argument("--only", default="", help="run only the configs whose name starts with this")
    ap.add_argument("--record", type=Path, help="write mergekit's outputs' fingerprints here (the test's reference)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    base, cands = build(args.out / "models")
    vmodels = build_vocab_models(args.out / "models")
    results, reference, vocabs = {}, {}, {}
    configs = {**{k: (lambda f: lambda: f(base, cands))(f) for k, f in CONFIGS.items()},
               **{k: (lambda f: lambda: f(vmodels))(f) for k, f in VOCAB_CONFIGS.items()}}
    for name, make in configs.items():
        if not name.startswith(args.only):
            continue
        cfg = args.out / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(make(), sort_keys=False))
        ours, theirs = args.out / f"{name}.h3ops", args.out / f"{name}.mergekit"
        subprocess.run([sys.executable, "-m", "h3ops.cli", "merge", str(cfg), str(ours), "--overwrite",
                        "--no-progress"], check=True)
        subprocess.run([f"{args.mergekit}/bin/mergekit-yaml", str(cfg), str(theirs)], check=True,
                       capture_output=True)
        a, b = load(ours), load(theirs)
        if name in VOCAB_CONFIGS:
            from transformers import AutoTokenizer

            va, vb = vocab_of(ours), vocab_of(theirs)
            a = {k: by_token(k, v, va) for k, v in a.items()}
            b = {k: by_token(k, v, vb) for k, v in b.items()}
            tb = AutoTokenizer.from_pretrained(theirs)
            vocabs[name] = {"vocab": vb, "tokens": tb.tokenize(SAMPLE), "ids": tb(SAMPLE)["input_ids"],
                            "vocab_size": json.loads((theirs / "config.json").read_text())["vocab_size"]}
            if va != vb:
                print(f"{name}: the vocabularies differ: {sorted(set(va.items()) ^ set(vb.items()))[:10]}")
        common = sorted(set(a) & set(b))
        worst = max(((a[k] - b[k]).abs().max().item(), k) for k in common)
        results[name] = {"max_abs_diff": worst[0], "at": worst[1], "tensors": len(common),
                         "only_h3ops": sorted(set(a) - set(b)), "only_mergekit": sorted(set(b) - set(a))}
        print(f"{name:<34} max |h3ops - mergekit| = {worst[0]:.3g} ({worst[1]})")
        reference[name] = {k: fingerprint(v) for k, v in b.items()}
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    if args.record:
        if args.only:
            raise SystemExit("--record needs every config: drop --only")
        inputs = {Path(f).name: {k: fingerprint(v) for k, v in load(Path(f)).items()}
                  for f in [base, *cands, *vmodels.values()]}
        args.record.write_text(json.dumps({"mergekit": "0.1.5", "inputs": inputs, "outputs": reference,
                                           "vocabularies": vocabs}) + "\n")
        print(f"recorded mergekit's outputs in {args.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
