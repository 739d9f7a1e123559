"""TSVM / R-TSVM benchmark: ours (exact, gram, randomized drivers) against fusion_bench's TSVM.

Inputs have SmolLM2-135M's shapes (hidden 576, intermediate 1536, kv 192, vocab 49152, 30 layers)
with random task vectors whose spectra decay (Δ = A·diag(exp(-i/τ))·Bᵀ, Gaussian A, B).

  python bench/tsvm_bench.py --tiny            # seconds: small shapes, checks the plumbing
  python bench/tsvm_bench.py --layer           # one transformer block (+ embedding), T = 3 and 5
  python bench/tsvm_bench.py --full --layers 30  # whole float32 checkpoints through `h3ops merge`,
      # each run under /usr/bin/time -v (wall, peak RSS); --drivers exact,gram --Ts 3,5
  $FUSION_PY bench/tsvm_bench.py --worker interleaved --result out.json [--Ts 3,5] [--reps 3]
      # per-matrix timings, ours and fusion_bench alternating in one process (best of reps)

Every measurement runs in its own child process (wall time and peak RSS from wait4), one torch
thread each. fusion_bench runs from a separate venv (FUSION_PY, default
/work/bench-venvs/fusion/bin/python; never a project dependency); its result is compared tensor
by tensor with ours (relative Frobenius norm of the merged task vector).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUSION_PY = os.environ.get("FUSION_PY", "/work/bench-venvs/fusion/bin/python")
SMOL = dict(hidden=576, inter=1536, kv=192, vocab=49152)
TINY = dict(hidden=64, inter=160, kv=32, vocab=512)


def block_shapes(s: dict, i: int) -> dict[str, tuple]:
    p = f"model.layers.{i}."
    h, f, kv = s["hidden"], s["inter"], s["kv"]
    return {p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h), p + "mlp.down_proj.weight": (h, f),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)}


def model_shapes(s: dict, layers: int, embed: bool = True) -> dict[str, tuple]:
    out = {"model.embed_tokens.weight": (s["vocab"], s["hidden"])} if embed else {}
    for i in range(layers):
        out.update(block_shapes(s, i))
    out["model.norm.weight"] = (s["hidden"],)
    return out


def make_inputs(shapes: dict, T: int, seed: int = 0, scale: float = 1e-3):
    """Base weights and T task vectors with decaying spectra (float32)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    base = {k: 0.02 * torch.randn(v, generator=g) for k, v in shapes.items()}
    deltas = []
    for _ in range(T):
        d = {}
        for k, v in shapes.items():
            if len(v) == 2:
                r = min(v)
                decay = torch.exp(-torch.arange(r, dtype=torch.float32) / (r / 8))
                a = torch.randn(v[0], r, generator=g) / r ** 0.5
                b = torch.randn(v[1], r, generator=g) / r ** 0.5
                d[k] = scale * (a * decay) @ b.T
            else:
                d[k] = scale * torch.randn(v, generator=g)
        deltas.append(d)
    return base, deltas


# ---- workers (run in child processes) ---------------------------------------------------------------

def worker_ours(args) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(ROOT))
    from merging.method import TensorTask, get_method

    torch.set_num_threads(args.threads)
    data = load_file(Path(args.data) / "inputs.safetensors")
    T = args.models
    names = [k[5:] for k in data if k.startswith("base.")]
    meth = get_method(args.method)
    # "exact64": the exact driver in float64, the reference both float32 results are measured against
    params = {"svd_driver": "exact", "compute_dtype": "float64"} if args.driver == "exact64" else {"svd_driver": args.driver}
    gp, mp = meth.resolve(params, [{}] * T)
    out, times = {}, {}
    for n in names:
        base = data[f"base.{n}"]
        cands = [base + data[f"delta{t}.{n}"] for t in range(T)]
        t0 = time.perf_counter()
        out[n] = meth.fn(TensorTask(n, base, cands, gp, mp)) - base
        times[n] = time.perf_counter() - t0
    save_file(out, Path(args.result) / "merged.safetensors")
    (Path(args.result) / "times.json").write_text(json.dumps(times))


def worker_fusion(args) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(args.threads)
    from fusion_bench.method.task_singular_vector.utils import TSVM_utils

    data = load_file(Path(args.data) / "inputs.safetensors")
    T = args.models
    names = [k[5:] for k in data if k.startswith("base.")]
    out, times = {}, {}
    for n in names:  # one key at a time, so per-layer times are comparable with ours
        tvs = [{n: data[f"delta{t}.{n}"]} for t in range(T)]
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            merged = TSVM_utils.compute_and_sum_svd_mem_reduction(tvs, exclude_keys=[], accelerator="cpu")
        times[n] = time.perf_counter() - t0
        out[n] = merged[n].contiguous()
    save_file(out, Path(args.result) / "merged.safetensors")
    (Path(args.result) / "times.json").write_text(json.dumps(times))


def worker_fusion_full(args) -> None:
    """fusion_bench's whole-model path: every task vector of the model in memory, then TSVM."""
    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(args.threads)
    from fusion_bench.method.task_singular_vector.utils import TSVM_utils

    base = load_file(Path(args.data) / "base" / "model.safetensors")
    tvs = []
    for t in range(args.models):
        cand = load_file(Path(args.data) / f"cand{t}" / "model.safetensors")
        tvs.append({k: cand[k].float() - base[k].float() for k in base})
        del cand
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        merged = TSVM_utils.compute_and_sum_svd_mem_reduction(tvs, exclude_keys=[], accelerator="cpu")
    save_file({k: (base[k].float() + merged[k]).to(base[k].dtype) for k in base},
              Path(args.result) / "model.safetensors")


def worker_engine(args) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(args.threads)
    from merging import merge

    d = Path(args.data)
    cfg = {"merge_method": args.method, "base_model": str(d / "base"),
           "models": [{"model": str(d / f"cand{t}")} for t in range(args.models)],
           "parameters": {"svd_driver": args.driver}}
    merge(cfg, Path(args.result) / "out", progress=False)


def worker_interleaved(args) -> None:
    """Ours and fusion_bench in ONE process (the fusion venv sees the project venv), alternating
    A/B/A/B per matrix and keeping the best of `--reps`: robust to the load of a shared machine."""
    import torch

    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(args.threads)
    from fusion_bench.method.task_singular_vector.utils import TSVM_utils

    from merging.method import TensorTask, get_method

    s = TINY if args.tiny else SMOL
    shapes = {k.split("layers.0.")[-1]: v for k, v in block_shapes(s, 0).items() if len(v) == 2}
    if not args.no_embed:
        shapes = {"embed_tokens": (s["vocab"], s["hidden"]), **shapes}
    variants = [("tsvm", "exact"), ("tsvm", "gram"), ("tsvm", "randomized"), ("r_tsvm", "exact"), ("r_tsvm", "gram")]
    out = {}
    for T in map(int, args.Ts.split(",")):
        base, deltas = make_inputs(shapes, T, seed=T)
        for n in shapes:
            b, cands = base[n], [base[n] + d[n] for d in deltas]
            best = {}

            def fusion():
                with contextlib.redirect_stdout(open(os.devnull, "w")):
                    return TSVM_utils.compute_and_sum_svd_mem_reduction([{n: d[n]} for d in deltas], accelerator="cpu")[n]

            def ours(method, driver):
                meth = get_method(method)
                gp, mp = meth.resolve({"svd_driver": driver}, [{}] * T)
                return lambda: meth.fn(TensorTask(n, b, cands, gp, mp)) - b

            runs = {"fusion_bench/tsvm": fusion, **{f"{m}/{d}": ours(m, d) for m, d in variants}}
            results = {}
            reps = 1 if n == "embed_tokens" else args.reps
            for _ in range(reps):
                for key, fn in runs.items():
                    t0 = time.perf_counter()
                    results[key] = fn()
                    best[key] = min(best.get(key, float("inf")), time.perf_counter() - t0)
            ref = results["tsvm/exact"]
            out[f"T{T}/{n}"] = {k: {"best_s": round(v, 4), "speedup_vs_fusion": round(best["fusion_bench/tsvm"] / v, 2),
                                    **({"rel_err_vs_tsvm_exact": rel_err(results[k], ref)} if not k.startswith("r_") else {})}
                                for k, v in best.items()}
            print(json.dumps({f"T{T}/{n}": out[f"T{T}/{n}"]}), flush=True)
    Path(args.result).write_text(json.dumps(out, indent=1))


# ---- driver ---------------------------------------------------------------------------------------

INPROC = False  # --tiny: run our workers in this process (seconds; no per-run RSS)


def child(argv: list[str], python: str = sys.executable) -> dict:
    """Run one worker; return wall seconds and peak RSS (MiB) of that child alone."""
    t0 = time.perf_counter()
    if INPROC and python == sys.executable:
        main(argv)
        return {"wall_s": time.perf_counter() - t0, "peak_rss_mib": float("nan")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([python, __file__, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode()[-2000:]
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {argv[:4]} failed ({proc.returncode}):\n{err}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024}


def rel_err(a, b) -> float:
    return float((a.double() - b.double()).norm() / max(float(b.double().norm()), 1e-30))


def bench_layers(shapes: dict, T: int, work: Path, methods, fusion: bool, threads: int) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    base, deltas = make_inputs(shapes, T, seed=T)
    data = work / f"layer-T{T}"
    data.mkdir(parents=True, exist_ok=True)
    tensors = {f"base.{k}": v for k, v in base.items()}
    for t, d in enumerate(deltas):
        tensors.update({f"delta{t}.{k}": v for k, v in d.items()})
    save_file(tensors, data / "inputs.safetensors")
    runs = {}
    for method, driver in methods:
        res = data / f"{method}-{driver}"
        res.mkdir(exist_ok=True)
        runs[f"{method}/{driver}"] = child(["--worker", "ours", "--method", method, "--driver", driver, "--data",
                                            str(data), "--result", str(res), "--models", str(T),
                                            "--threads", str(threads)]) | {"dir": res}
    if fusion:
        res = data / "fusion"
        res.mkdir(exist_ok=True)
        runs["fusion_bench/tsvm"] = child(["--worker", "fusion", "--data", str(data), "--result", str(res),
                                           "--models", str(T), "--threads", str(threads)], python=FUSION_PY) | {"dir": res}
    report = {}
    ref = load_file(runs["tsvm/exact"]["dir"] / "merged.safetensors")
    ref64 = load_file(runs["tsvm/exact64"]["dir"] / "merged.safetensors") if "tsvm/exact64" in runs else None
    for key, r in runs.items():
        times = json.loads((r["dir"] / "times.json").read_text())
        merged = load_file(r["dir"] / "merged.safetensors")
        mats = [n for n in shapes if len(shapes[n]) == 2]
        entry = {"wall_s": round(r["wall_s"], 2), "peak_rss_mib": r["peak_rss_mib"] if INPROC else round(r["peak_rss_mib"]),
                 "compute_s": {n.split("layers.0.")[-1]: round(times[n], 4) for n in mats},
                 "compute_total_s": round(sum(times.values()), 3)}
        if key.startswith("tsvm/") or key.startswith("fusion"):
            entry["max_rel_err_vs_tsvm_exact"] = max(rel_err(merged[n], ref[n]) for n in shapes)
            if ref64 is not None:
                entry["rel_err_vs_float64"] = {n.split("layers.0.")[-1]: rel_err(merged[n], ref64[n]) for n in mats}
        report[key] = entry
    if "r_tsvm/exact" in runs:
        rex = load_file(runs["r_tsvm/exact"]["dir"] / "merged.safetensors")
        for key in [k for k in runs if k.startswith("r_tsvm/") and k != "r_tsvm/exact"]:
            m = load_file(runs[key]["dir"] / "merged.safetensors")
            report[key]["max_rel_err_vs_r_tsvm_exact"] = max(rel_err(m[n], rex[n]) for n in shapes)
    return report


def spectrum_delta(shape: tuple, seed: int, scale: float = 1e-3):
    """One task-vector tensor with a decaying spectrum, seeded by (seed, name) alone."""
    import torch

    g = torch.Generator().manual_seed(seed)
    if len(shape) != 2:
        return scale * torch.randn(shape, generator=g)
    r = min(shape)
    decay = torch.exp(-torch.arange(r, dtype=torch.float32) / (r / 8))
    a = torch.randn(shape[0], r, generator=g) / r ** 0.5
    b = torch.randn(shape[1], r, generator=g) / r ** 0.5
    return scale * (a * decay) @ b.T


def write_checkpoints(shapes: dict, T: int, data: Path, dtype) -> None:
    """base + T candidates on disk, built one checkpoint at a time (peak: two checkpoints)."""
    import zlib

    import torch
    from safetensors.torch import save_file

    def seed(*parts):
        return zlib.crc32("\0".join(map(str, parts)).encode())

    base = {k: 0.02 * torch.randn(v, generator=torch.Generator().manual_seed(seed("base", k)))
            for k, v in shapes.items()}
    (data / "base").mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(dtype).contiguous() for k, v in base.items()}, data / "base" / "model.safetensors")
    for t in range(T):
        cand = {k: (base[k] + spectrum_delta(v, seed("delta", t, k))).to(dtype).contiguous()
                for k, v in shapes.items()}
        (data / f"cand{t}").mkdir(parents=True, exist_ok=True)
        save_file(cand, data / f"cand{t}" / "model.safetensors")
        del cand


def timed(cmd: list[str]) -> dict:
    """Run cmd under /usr/bin/time -v (one torch thread): wall seconds, peak RSS, machine load."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    load = os.popen("uptime").read().strip().split("load average:")[-1].strip()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    info = dict(line.strip().rsplit(": ", 1) for line in proc.stderr.splitlines() if ": " in line)
    h, m_, sec = ([0, 0] + info["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":"))[-3:]
    return {"wall_s": round(int(h) * 3600 + int(m_) * 60 + float(sec), 1),
            "peak_rss_mib": round(int(info["Maximum resident set size (kbytes)"]) / 1024),
            "load_before": load}


def bench_full(s: dict, layers: int, T: int, work: Path, methods, fusion: bool, threads: int,
               dtype: str = "float32") -> dict:
    """Whole checkpoints through `h3ops merge` vs fusion_bench's whole-model TSVM, each under
    /usr/bin/time -v. float32 checkpoints by default, so agreement is measurable below bf16's 4e-3."""
    import torch
    from safetensors.torch import load_file

    shapes = model_shapes(s, layers)
    data = work / f"full-L{layers}-T{T}"
    write_checkpoints(shapes, T, data, getattr(torch, dtype))
    runs = {}
    for method, driver in methods:
        res = data / f"{method}-{driver}"
        res.mkdir(exist_ok=True)
        cfg = {"merge_method": method, "base_model": str(data / "base"),
               "models": [{"model": str(data / f"cand{t}")} for t in range(T)],
               "parameters": {"svd_driver": driver}}
        (res / "config.yaml").write_text(json.dumps(cfg))  # JSON is YAML
        runs[f"{method}/{driver}"] = timed([str(ROOT / ".venv/bin/h3ops"), "merge", str(res / "config.yaml"),
                                            str(res / "out"), "--no-progress"]) | {"file": res / "out" / "model.safetensors"}
        print(f"  {method}/{driver}: {runs[f'{method}/{driver}']}", flush=True)
    if fusion:
        res = data / "fusion"
        res.mkdir(exist_ok=True)
        runs["fusion_bench/tsvm"] = timed([FUSION_PY, __file__, "--worker", "fusion_full", "--data", str(data),
                                           "--result", str(res), "--models", str(T), "--threads", str(threads)]
                                          ) | {"file": res / "model.safetensors"}
        print(f"  fusion_bench/tsvm: {runs['fusion_bench/tsvm']}", flush=True)
    b = load_file(data / "base" / "model.safetensors")
    refs = {m: load_file(runs[f"{m}/exact"]["file"]) for m in ("tsvm", "r_tsvm") if f"{m}/exact" in runs}
    report = {}
    for key, r in runs.items():
        entry = {k: r[k] for k in ("wall_s", "peak_rss_mib", "load_before")}
        ref = refs.get("r_tsvm" if key.startswith("r_tsvm") else "tsvm")
        if ref is not None and not key.endswith("/exact"):
            m = load_file(r["file"])
            # per tensor: the merged task vectors, relative to the reference's norm; max per kind
            errs = {n: rel_err(m[n].float() - b[n].float(), ref[n].float() - b[n].float()) for n in b if b[n].ndim == 2}
            kinds = {}
            for n, e in errs.items():
                kind = n.split(".")[-2] if "layers." in n else n
                kinds[kind] = max(kinds.get(kind, 0.0), e)
            entry["rel_err_vs_ours_exact"] = {"max": max(errs.values()), **{k: f"{v:.1e}" for k, v in kinds.items()}}
            del m
        report[key] = entry
    import shutil

    shutil.rmtree(data, ignore_errors=True)
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", choices=("ours", "fusion", "fusion_full", "engine", "interleaved"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--method", default="tsvm")
    p.add_argument("--driver", default="exact")
    p.add_argument("--data"), p.add_argument("--result")
    p.add_argument("--models", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="small shapes, seconds")
    p.add_argument("--layer", action="store_true", help="one SmolLM2 block + embedding (default)")
    p.add_argument("--full", action="store_true", help="whole checkpoints through the engine")
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="--full: checkpoint dtype")
    p.add_argument("--Ts", default="3,5")
    p.add_argument("--drivers", default="exact,gram,randomized,exact64")
    p.add_argument("--methods", default="tsvm,r_tsvm")
    p.add_argument("--no-fusion", action="store_true")
    p.add_argument("--fusion", action="store_true", help="--tiny: also run fusion_bench")
    p.add_argument("--no-embed", action="store_true", help="layer mode: leave the 49152×576 embedding out")
    p.add_argument("--json", help="write results here")
    args = p.parse_args(argv)
    if args.worker:
        {"ours": worker_ours, "fusion": worker_fusion, "fusion_full": worker_fusion_full,
         "engine": worker_engine, "interleaved": worker_interleaved}[args.worker](args)
        return
    global INPROC
    if args.tiny:  # seconds: in-process, one T, no fusion_bench child unless --Ts/--drivers say more
        INPROC, args.no_fusion = True, args.no_fusion or "--fusion" not in sys.argv
        if "--Ts" not in sys.argv:
            args.Ts = "3"
    fusion = not args.no_fusion and Path(FUSION_PY).exists()
    drivers = args.drivers.split(",")
    methods = [(m, d) for m in args.methods.split(",") for d in drivers if not (m == "r_tsvm" and d == "exact64")]
    results = {"uptime_before": os.popen("uptime").read().strip(), "threads": args.threads}
    with tempfile.TemporaryDirectory(prefix="tsvm-bench-") as tmp:
        work = Path(tmp)
        for T in map(int, args.Ts.split(",")):
            if args.full:
                s = TINY if args.tiny else SMOL
                results[f"full/L{args.layers}/T{T}"] = bench_full(s, args.layers, T, work, methods, fusion, args.threads,
                                                                     args.dtype)
            else:
                s = TINY if args.tiny else SMOL
                shapes = block_shapes(s, 0)
                if not args.no_embed:
                    shapes = {"model.embed_tokens.weight": (s["vocab"], s["hidden"]), **shapes}
                results[f"layer/T{T}"] = bench_layers(shapes, T, work, methods, fusion, args.threads)
            print(json.dumps({k: v for k, v in results.items() if k.endswith(f"T{T}")}, indent=1), flush=True)
    results["uptime_after"] = os.popen("uptime").read().strip()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
