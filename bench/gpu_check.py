"""GPU check of the merge engine and the spectral merges (run on a lent CUDA machine).

1. Device independence: every method merged on cpu and on cuda with the same seed; the largest
   absolute difference per method (randomised methods draw their masks from the same seeded
   generator whatever the device, so they must agree too).
2. Spectral merges at LLM scale: one TSVM / R-TSVM layer (4096 x 4096, 3 task vectors) per SVD
   driver on cuda, beside the same layer on cpu where it fits in time.

Usage: python bench/gpu_check.py OUT.json [--layer 4096]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from h3ops.testing import make_candidate, make_tiny_llama
from merging import merge
from merging.method import TensorTask, get_method

METHODS = {
    "linear": {}, "task_arithmetic": {}, "ties": {"density": 0.5}, "dare_linear": {"density": 0.5},
    "dare_ties": {"density": 0.5}, "della": {"density": 0.5}, "breadcrumbs": {"density": 0.8},
    "model_stock": {}, "tsvm": {}, "r_tsvm": {},
}


def merged(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def device_agreement(root: Path) -> dict:
    base = make_tiny_llama(root / "base", layers=4, hidden=256, heads=8)
    cands = [make_candidate(base, root / f"c{i}", seed=i + 1) for i in range(3)]
    rows = {}
    for name, params in METHODS.items():
        cfg = {"merge_method": name, "base_model": str(base), "parameters": params,
               "models": [{"model": str(c)} for c in cands]}
        res = {}
        for dev in ("cpu", "cuda"):
            t0 = time.perf_counter()
            out = merge(cfg, root / f"{name}-{dev}", seed=7, device=dev, progress=False)
            res[dev] = (time.perf_counter() - t0, merged(out))
        a, b = res["cpu"][1], res["cuda"][1]
        diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
        rows[name] = {"max_abs_diff_cpu_vs_cuda": diff, "cpu_s": round(res["cpu"][0], 3),
                      "cuda_s": round(res["cuda"][0], 3)}
        print(name, rows[name], flush=True)
    return rows


def spectral_layer(n: int, device: str, repeats: int = 3) -> dict:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(n, n, generator=gen)
    cands = [base + 0.01 * torch.randn(n, n, generator=gen) for _ in range(3)]
    base, cands = base.to(device), [c.to(device) for c in cands]
    rows = {}
    for method in ("tsvm", "r_tsvm"):
        m = get_method(method)
        for driver in ("exact", "gram", "randomized"):
            params, per_model = m.resolve({"svd_driver": driver}, [{} for _ in cands])
            task = TensorTask(f"layers.0.mlp.{n}", base, cands, params, per_model, seed=0)
            times = []
            for _ in range(repeats):
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = m.fn(task)
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            rows[f"{method}/{driver}"] = {"median_s": round(sorted(times)[len(times) // 2], 4),
                                          "checksum": float(out.double().abs().sum())}
            print(device, n, method, driver, rows[f"{method}/{driver}"], flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layer", type=int, default=4096)
    ap.add_argument("--cpu-layer", type=int, default=1024)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        report["device_agreement"] = device_agreement(Path(tmp))
    report[f"spectral_cuda_{args.layer}"] = spectral_layer(args.layer, "cuda")
    report[f"spectral_cuda_{args.cpu_layer}"] = spectral_layer(args.cpu_layer, "cuda")
    report[f"spectral_cpu_{args.cpu_layer}"] = spectral_layer(args.cpu_layer, "cpu", repeats=1)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
