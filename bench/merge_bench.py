"""Merge benchmark: h3ops merge vs mergekit 0.1.5 vs the I/O floor, on the same bf16 checkpoints.

    python bench/merge_bench.py                       # ~200M params, base + 3, ties/della/linear/task_arithmetic
    python bench/merge_bench.py --tiny                # seconds; what the test runs to keep this working
    python bench/merge_bench.py --depth 8,32 --hidden 1536 --methods ties   # RSS vs depth

Every run is a separate process under `/usr/bin/time -v` (wall time and peak RSS from there);
ours and mergekit's alternate within each repetition; the table reports medians. mergekit lives in
its own venv (--mergekit, default /work/bench-venvs/mergekit); it is never a project dependency.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DETERMINISTIC = {"linear", "task_arithmetic", "ties", "model_stock", "breadcrumbs", "breadcrumbs_ties"}
DENSITY = {m: 0.5 for m in ("ties", "della", "della_linear", "dare_ties", "dare_linear", "breadcrumbs",
                            "breadcrumbs_ties")}


def build_models(root: Path, *, layers: int, hidden: int, intermediate: int, vocab: int, n_cands: int = 3,
                 dtype: str = "bfloat16") -> list[Path]:
    """A random Llama base and candidates = base + small noise (what DPO leaves), cached on disk."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from h3ops.testing import make_tokenizer

    tag = f"L{layers}-H{hidden}-I{intermediate}-V{vocab}" + ("" if dtype == "bfloat16" else f"-{dtype}")
    dt = getattr(torch, dtype)
    folders = [root / tag / name for name in ["base"] + [f"cand{i}" for i in range(n_cands)]]
    if all((f / "model.safetensors").is_file() for f in folders):
        return folders
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                      tie_word_embeddings=True, architectures=["LlamaForCausalLM"], dtype=dtype)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(cfg).state_dict().items() if k != "lm_head.weight"}
    tok = make_tokenizer()
    gen = torch.Generator().manual_seed(0)
    base = {k: (torch.ones(s) if len(s) == 1 else 0.02 * torch.randn(s, generator=gen)).to(dt)
            for k, s in shapes.items()}
    for i, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        cfg.save_pretrained(folder)
        tok.save_pretrained(folder)
        tensors = base if i == 0 else {k: (v.float() + 0.002 * torch.randn(v.shape, generator=gen)).to(dt)
                                       for k, v in base.items()}
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        del tensors
    return folders


def write_config(path: Path, method: str, folders: list[Path], out_dtype: str = "bfloat16") -> Path:
    base, cands = folders[0], folders[1:]
    lines = ["models:"]
    for c in cands:
        lines.append(f"  - model: {c}")
        params = ({} if method == "model_stock" else {"weight": 1.0}) | (
            {"density": DENSITY[method]} if method in DENSITY else {})
        if method in ("della", "della_linear"):
            params["epsilon"] = 0.1
        if params:
            lines.append("    parameters: {" + ", ".join(f"{k}: {v}" for k, v in params.items()) + "}")
    lines += [f"merge_method: {method}", "dtype: float32", f"out_dtype: {out_dtype}", ""]
    if method != "linear":  # mergekit's linear would average the base in too (and want its weight)
        lines.insert(-1, f"base_model: {base}")
    path.write_text("\n".join(lines))
    return path


def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Run under /usr/bin/time -v; wall seconds and peak RSS (MB). Prints one line per run as it ends."""
    start = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)) / 1024
    print(f"run: {Path(cmd[0]).name} {' '.join(Path(c).name for c in cmd[1:4])}: {wall:.2f} s, {rss:.0f} MB, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    return {"wall_s": wall, "rss_mb": rss}


def io_floor(config: str, out: str) -> None:
    """Read every input tensor once and write the output once with safetensors (no merging)."""
    from h3ops import safe_yaml
    from safetensors import safe_open
    from safetensors.torch import save_file

    cfg = safe_yaml.load_file(config)
    folders = ([cfg["base_model"]] if "base_model" in cfg else []) + [m["model"] for m in cfg["models"]]
    handles = [safe_open(str(Path(f) / "model.safetensors"), "pt") for f in folders]
    result = {}
    for name in handles[0].keys():
        values = [h.get_tensor(name) for h in handles]
        result[name] = values[0]
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file(result, str(Path(out) / "model.safetensors"), metadata={"format": "pt"})


def max_diff(a: Path, b: Path) -> tuple[float, float]:
    """Max |a - b| over all tensors and the fraction of elements that differ."""
    import torch
    from safetensors.torch import load_file

    from h3ops.checkpoint import weight_files

    ta, tb = {}, {}
    for f in weight_files(a):
        ta.update(load_file(f))
    for f in weight_files(b):
        tb.update(load_file(f))
    assert ta.keys() == tb.keys(), f"different tensor names: {sorted(set(ta) ^ set(tb))[:5]}"
    worst, differ, total = 0.0, 0, 0
    for k in ta:
        d = (ta[k].float() - tb[k].float()).abs()
        worst = max(worst, float(d.max()))
        differ += int((d > 0).sum())
        total += d.numel()
    return worst, differ / total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny models, 1 repetition, no mergekit unless --mergekit")
    ap.add_argument("--work", default="/tmp/h3ops-merge-bench")
    ap.add_argument("--methods", default="linear,task_arithmetic,ties,della")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--depth", default="", help="comma-separated layer counts: RSS-vs-depth mode")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--input-dtype", default="bfloat16", choices=("bfloat16", "float32"),
                    help="float32: continuous values, no ties at TIES thresholds (agreement check)")
    ap.add_argument("--mergekit", default=None, help="mergekit venv (default /work/bench-venvs/mergekit)")
    ap.add_argument("--no-mergekit", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--floor", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.floor:
        io_floor(*args.floor)
        return 0
    work = Path(args.work)
    if args.tiny:
        shapes = [dict(layers=2, hidden=64, intermediate=128, vocab=320)]
        args.reps = 1
    else:
        hidden = args.hidden
        inter = int(hidden * 2.75) // 64 * 64
        depths = [int(x) for x in args.depth.split(",")] if args.depth else [args.layers]
        shapes = [dict(layers=d, hidden=hidden, intermediate=inter, vocab=32000) for d in depths]
    mk = None
    if not args.no_mergekit and (args.mergekit or not args.tiny):
        mk = Path(args.mergekit or "/work/bench-venvs/mergekit") / "bin" / "mergekit-yaml"
        if not mk.is_file():
            print(f"mergekit not found at {mk}; comparing against the I/O floor only", file=sys.stderr)
            mk = None
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    py = sys.executable
    results = []
    for shape in shapes:
        folders = build_models(work / "models", **shape, dtype=args.input_dtype)
        size_mb = (folders[0] / "model.safetensors").stat().st_size / 1e6
        runs: dict[tuple[str, str], list[dict]] = {}
        for rep in range(args.reps):
            for method in args.methods.split(","):
                cfg = write_config(work / f"{method}.yaml", method, folders, out_dtype=args.input_dtype)
                ours, theirs, floor = work / f"out-h3ops-{method}", work / f"out-mergekit-{method}", work / "out-floor"
                runs.setdefault(("h3ops", method), []).append(timed(
                    [py, "-m", "merging.cli", str(cfg), str(ours), "--overwrite", "--no-progress"], env))
                if mk is not None:
                    shutil.rmtree(theirs, ignore_errors=True)
                    runs.setdefault(("mergekit", method), []).append(timed(
                        [str(mk), str(cfg), str(theirs), "--quiet", "--random-seed", "0"], env))
                if method == args.methods.split(",")[0]:
                    shutil.rmtree(floor, ignore_errors=True)
                    runs.setdefault(("io-floor", "-"), []).append(timed(
                        [py, __file__, "--floor", str(cfg), str(floor)], env))
        for (tool, method), rs in runs.items():
            row = {"layers": shape["layers"], "checkpoint_mb": round(size_mb), "tool": tool, "method": method,
                   "runs": len(rs), "wall_s": statistics.median(r["wall_s"] for r in rs),
                   "rss_mb": max(r["rss_mb"] for r in rs)}
            if tool == "h3ops" and mk is not None and method in DETERMINISTIC:
                row["max_abs_diff_vs_mergekit"], row["frac_elems_differ"] = max_diff(
                    work / f"out-h3ops-{method}", work / f"out-mergekit-{method}")
            results.append(row)
    print(f"load: {os.getloadavg()}")
    print("| layers | ckpt MB | tool | method | runs | median wall s | peak RSS MB | vs mergekit |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        extra = ""
        if "max_abs_diff_vs_mergekit" in r:
            extra = f"max diff {r['max_abs_diff_vs_mergekit']:.2g}, {100 * r['frac_elems_differ']:.4f}% differ"
        print(f"| {r['layers']} | {r['checkpoint_mb']} | {r['tool']} | {r['method']} | {r['runs']} | "
              f"{r['wall_s']:.2f} | {r['rss_mb']:.0f} | {extra} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
