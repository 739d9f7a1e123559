"""Task-vector conflict diagnostics: why a merge of these candidates is easy or hard, per tensor.

Per float tensor: the candidates' delta norms, sign-conflict ratio (share of entries where some
candidates go up and others down), exact-zero sparsity, pairwise cosine between task vectors; per
2-D tensor also R-TSVM's decisions (outlier fraction, α_t, k_base, k_l; spec rtsvm.md §4) and TSVM's
singular task interference (STI, §3.11) of the ⌊r/T⌋-per-task basis. A summary groups tensors by
layer type (the name with its block index replaced by `*`).

Two ways in:
* `h3ops diagnose BASE CAND... [--json OUT]` streams one tensor at a time from the checkpoints;
* `Collector` lets the merge engine record the same facts for the tensors it merges (plus what a
  method reported through `task.state["diagnostics"]`) and write `diagnostics.json`.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from h3ops.cliparser import Parser

import torch

from merging.methods.rtsvm import RTSVMConfig, layer_statistics
from merging.svd import SVDOptions, singular_task_interference, top_svd

REPORT_VERSION = 1
DIAGNOSTICS = "diagnostics.json"  # its name inside a merged checkpoint folder (derived, not content)
# What a spectral method reports that replaces the collector's own R-TSVM-default estimate.
_DECISIONS = ("alpha_t", "outlier_fraction", "sparsity", "k_base", "k_l", "sti", "sti_rel")


def layer_type(name: str) -> str:
    """`model.layers.17.mlp.up_proj.weight` → `model.layers.*.mlp.up_proj.weight`."""
    return re.sub(r"\.\d+\.", ".*.", name)


def sign_conflict(deltas: list[torch.Tensor]) -> float:
    """Share of entries where at least one candidate is > 0 and another < 0 (zeros abstain)."""
    up = torch.zeros_like(deltas[0], dtype=torch.bool)
    down = torch.zeros_like(up)
    for d in deltas:
        up |= d > 0
        down |= d < 0
    return float((up & down).double().mean())


def pairwise_cosine(deltas: list[torch.Tensor]) -> list[list[float]]:
    flat = [d.reshape(-1).double() for d in deltas]
    norms = [float(f.norm()) for f in flat]
    T = len(flat)
    out = [[1.0] * T for _ in range(T)]
    for i in range(T):
        for j in range(i + 1, T):
            c = float(flat[i] @ flat[j]) / max(norms[i] * norms[j], 1e-30)
            out[i][j] = out[j][i] = c
    return out


def interference(deltas: list[torch.Tensor], k: int, opts: SVDOptions = SVDOptions(), name: str = "") -> dict:
    """STI of TSVM's basis: ||(ÛᵀÛ − I) Σ̂ (V̂ᵀV̂ − I)||₁, and relative to ||Σ̂||₁."""
    us, ss, vs = [], [], []
    for t, d in enumerate(deltas):
        u, s, v = top_svd(d.to(opts.dtype), k, opts, name=f"{name}\0{t}")
        us.append(u), ss.append(s), vs.append(v)
    s_hat = torch.cat(ss)
    sti = singular_task_interference(torch.cat(us, 1), s_hat, torch.cat(vs, 1))
    return {"sti": sti, "sti_rel": sti / max(float(s_hat.sum()), 1e-30)}


def tensor_diagnostics(name: str, base: torch.Tensor, candidates: list[torch.Tensor], *, spectral: bool = True,
                       cfg: RTSVMConfig = RTSVMConfig(), opts: SVDOptions = SVDOptions(),
                       decisions: bool = True) -> dict[str, Any]:
    """Every conflict statistic of one tensor (float32 inputs on any device); `decisions=False`
    skips R-TSVM's per-tensor decisions (α_t, k_l, …) when the merging method already reported its own."""
    deltas = [c.float() - base.float() for c in candidates]
    row: dict[str, Any] = {
        "name": name, "layer_type": layer_type(name), "shape": list(base.shape),
        "delta_norm": [float(d.double().norm()) for d in deltas],
        "sign_conflict": sign_conflict(deltas),
        "zero_sparsity": [float((d == 0).double().mean()) for d in deltas],
    }
    if len(deltas) > 1:
        cos = pairwise_cosine(deltas)
        row["cosine"] = cos
        pairs = [cos[i][j] for i in range(len(cos)) for j in range(i + 1, len(cos))]
        row["mean_cosine"] = statistics.fmean(pairs)
    if base.ndim == 2 and decisions:
        st = layer_statistics(deltas, cfg)
        st.pop("thresholded", None)
        row.update({k: st[k] for k in ("alpha_t", "outlier_fraction", "sparsity", "k_base", "k_l")})
        if spectral and st["k_base"] >= 1:
            row.update(interference(deltas, st["k_base"], opts, name))
    return row


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per layer type: tensor count and the mean of each scalar statistic (α_t averaged per model)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["layer_type"], []).append(r)
    out = {}
    for lt, rs in sorted(groups.items()):
        s: dict[str, Any] = {"tensors": len(rs)}
        for key in ("sign_conflict", "mean_cosine", "sparsity", "sti_rel", "k_base", "k_l"):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                s[key] = statistics.fmean(vals)
        norms = [statistics.fmean(r["delta_norm"]) for r in rs]
        s["delta_norm"] = statistics.fmean(norms)
        alphas = [r["alpha_t"] for r in rs if r.get("alpha_t")]
        if alphas:
            s["alpha_t"] = [statistics.fmean(col) for col in zip(*alphas)]
        out[lt] = s
    return out


def format_summary(summary: dict[str, dict]) -> str:
    lines = [f"{'layer type':<48} {'n':>3} {'sign_conf':>9} {'cos':>6} {'sparsity':>8} {'STI_rel':>8} "
             f"{'k_l/k_base':>11}  alpha_t"]
    for lt, s in summary.items():
        def f(key, fmt):
            return format(s[key], fmt) if key in s else "-"
        kk = f"{s['k_l']:.0f}/{s['k_base']:.0f}" if "k_l" in s else "-"
        alpha = " ".join(f"{a:.2f}" for a in s.get("alpha_t", []))
        lines.append(f"{lt[-48:]:<48} {s['tensors']:>3} {f('sign_conflict', '.3f'):>9} {f('mean_cosine', '.3f'):>6} "
                     f"{f('sparsity', '.3f'):>8} {f('sti_rel', '.3f'):>8} {kk:>11}  {alpha}")
    return "\n".join(lines)


class Collector:
    """Diagnostics gathered during a merge: call `observe` per merged tensor, then `write`.

    The engine opts in by putting `collector.sink` at `task.state["diagnostics"]`; spectral
    methods store their α_t, k_l and STI there, which `observe` folds into the tensor's row.
    """

    def __init__(self, method: str = "", spectral: bool = False):
        self.method, self.spectral, self.rows = method, spectral, []
        self.sink: dict[str, dict] = {}

    def observe(self, name: str, base: torch.Tensor, candidates: list[torch.Tensor]) -> None:
        if base is None or not base.is_floating_point():
            return
        reported = self.sink.pop(name, None) or {}
        own = "k_l" in reported  # a spectral method's actual decisions beat the defaults' estimate
        row = tensor_diagnostics(name, base, candidates, spectral=self.spectral and not own, decisions=not own)
        if reported:
            row["method"] = {k: v for k, v in reported.items() if k != "method"}
            row.update({k: reported[k] for k in _DECISIONS if reported.get(k) is not None})
        self.rows.append(row)

    def report(self, inputs: list[dict], settings: dict | None = None) -> dict:
        return build_report(self.rows, inputs, method=self.method, settings=settings)


def build_report(rows: list[dict], inputs: list[dict], method: str = "", settings: dict | None = None) -> dict:
    from h3ops import __version__ as version  # noqa: PLC0415 (cheap; keeps the module top light)

    return {"kind": "h3ops.diagnostics", "version": REPORT_VERSION, "library_version": version,
            "method": method or None, "inputs": inputs, "settings": settings or {},
            "summary": summarize(rows), "tensors": rows}


def write_report(report: dict, path: str | Path) -> Path:
    """Write atomically: a reader never sees half a report."""
    from h3ops.atomic import write_json

    return write_json(path, report, indent=1)


# ---- h3ops diagnose ------------------------------------------------------------------------------------

def diagnose(base: str | Path, candidates: list[str | Path], *, device: str = "cpu", spectral: bool = True,
             svd_driver: str = "exact", exclude: tuple = (), allow_pickle: bool = False) -> dict:
    """Stream the checkpoints tensor by tensor and return the report (inputs checked first)."""
    import fnmatch

    from h3ops.checkpoint import CheckpointError
    from h3ops.digest import digest_dir
    from merging.io import CheckpointReader

    paths = [Path(base), *(Path(c) for c in candidates)]
    if len(paths) < 2:
        raise ValueError("diagnose needs a base and at least one candidate")
    readers = [CheckpointReader(p, allow_pickle=allow_pickle) for p in paths]
    names = sorted(readers[0].names())
    for p, r in zip(paths[1:], readers[1:]):
        if set(r.names()) != set(names):
            diff = sorted(set(names) ^ set(r.names()))[:5]
            raise CheckpointError(f"{p}: tensor names differ from the base {paths[0]} (e.g. {diff})")
        for n in names:
            if r.shape(n) != readers[0].shape(n):
                raise CheckpointError(f"tensor {n!r}: shape {list(r.shape(n))} in {p} but "
                                      f"{list(readers[0].shape(n))} in {paths[0]}")
    dev = torch.device(device)
    opts = SVDOptions(driver=svd_driver)
    rows = []
    for n in names:
        if not readers[0].dtype(n).is_floating_point or any(fnmatch.fnmatchcase(n, g) for g in exclude):
            continue
        values = [r.get(n).to(dev, torch.float32) for r in readers]
        for p, v in zip(paths, values):
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"tensor {n!r} in {p}: non-finite values (NaN/Inf)")
        rows.append(tensor_diagnostics(n, values[0], values[1:], spectral=spectral, opts=opts))
        del values
    inputs = [{"uri": str(p), "digest": digest_dir(p), "role": "base" if i == 0 else "candidate"}
              for i, p in enumerate(paths)]
    settings = {"spectral": spectral, "svd_driver": svd_driver, "exclude": list(exclude), "device": str(dev),
                "rtsvm_defaults": True}
    return build_report(rows, inputs, settings=settings)


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="h3ops diagnose", example="h3ops diagnose ./base ./helpful ./honest ./harmless --json report.json",
               description="Task-vector conflict diagnostics of candidates "
                                "against their common base (sign conflicts, cosine, sparsity, STI, R-TSVM α_t/k_l).")
    p.add_argument("base", help="base checkpoint folder")
    p.add_argument("candidates", nargs="+", help="candidate checkpoint folders fine-tuned from the base")
    p.add_argument("--json", dest="json_out", help="write the full report (with input digests) here")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--no-svd", action="store_true", help="skip the singular task interference (no SVDs)")
    p.add_argument("--svd-driver", default="exact", choices=("exact", "gram", "randomized"))
    p.add_argument("--exclude", action="append", default=[], help="glob of tensor names to skip (repeatable)")
    p.add_argument("--allow-pickle", action="store_true", help="also read pytorch_model.bin checkpoints (unsafe)")
    return p


def main(argv: list[str]) -> int:
    if argv and argv[0] == "diagnose":
        argv = argv[1:]
    args = _parser().parse_args(argv)
    from h3ops.checkpoint import CheckpointError

    try:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {args.device!r}: CUDA is not available on this machine")
        report = diagnose(args.base, args.candidates, device=args.device, spectral=not args.no_svd,
                          svd_driver=args.svd_driver, exclude=tuple(args.exclude), allow_pickle=args.allow_pickle)
    except (CheckpointError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"h3ops diagnose: error: {e}", file=sys.stderr)
        return 2
    print(format_summary(report["summary"]))
    if args.json_out:
        write_report(report, args.json_out)
        print(f"h3ops diagnose: report written to {args.json_out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
