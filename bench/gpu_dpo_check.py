"""GPU check of distributed DPO (run on a lent CUDA machine): FSDP over NCCL, bf16 weights.

One command, JSON on stdout, exit 1 on any mismatch:

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/gpu_dpo_check.py [--devices N] [--out results.json]

1. fp32: a tiny Llama (4 layers, hidden 256) trained in one process on cuda:0 and by the step's
   torchrun launcher on N GPUs with FSDP2 (N = all visible GPUs; one GPU still runs the FSDP path
   as a single shard), same global batch: losses and final weights must agree within ATOL.
2. bf16: the same launch with `precision: bf16` must compute in bf16 (FSDP mixed precision: the
   weights are all-gathered in bf16; Accelerate keeps the sharded master copy in fp32), train (loss
   falls) and save a consolidated checkpoint in the base's dtype.
3. resume: the launch killed (process group, SIGKILL) after its step-2 checkpoint, rerun: resumes
   from step 2 and ends where the uninterrupted fp32 launch did.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ATOL = 1e-4  # cuda kernels reduce in a different order across shard layouts; fp32 weights
STEPS = 6

def main() -> int:
    import torch
    from safetensors.torch import load_file

    from alignment.dataset import build_dataset
    from alignment.dpo import DPOSettings, train
    from h3ops.checkpoint import Manifest
    from h3ops.testing import make_tiny_llama

    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=torch.cuda.device_count())
    ap.add_argument("--out")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        return 2
    n = args.devices
    root = Path(tempfile.mkdtemp(prefix="gpu-dpo-"))
    base = make_tiny_llama(root / "base", layers=4, hidden=256, heads=8)
    src = root / "pairs.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"Question: what is {i} plus {i}?", "chosen": f"Answer: {2 * i}.",
                                       "rejected": "I cannot help with that request.", "dimension": "honesty",
                                       "source": "gpu-check"}) + "\n" for i in range(64)))
    data = build_dataset([src], root / "ds", dimension="honesty", eval_holdout=0).uri

    def settings(**kw):
        return DPOSettings.preset("test", max_steps=STEPS, batch_size=4 * n, per_device_batch_size=2,
                                  learning_rate=1e-4, **kw)

    def w(p):
        return load_file(Path(p) / "model.safetensors")

    def hist(p):
        return [h["loss"] for h in json.loads((Path(p) / "train_history.json").read_text())]

    def maxdiff(a, b):
        return max((a[k].float() - b[k].float()).abs().max().item() for k in a)

    report: dict = {"devices": n, "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    t = time.perf_counter()
    single = train(base, data, root / "single", settings=settings(), dimension="honesty")
    report["single_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    fsdp = train(base, data, root / "fsdp", settings=settings(), dimension="honesty", devices=n, launch=True)
    report["fsdp_s"] = round(time.perf_counter() - t, 1)
    mf = Manifest.read(fsdp).parameters
    report["fp32"] = {"distributed_type": mf["distributed_type"], "losses_single": hist(single),
                      "losses_fsdp": hist(fsdp), "max_loss_diff": max(abs(a - b) for a, b in zip(hist(single), hist(fsdp))),
                      "max_weight_diff": maxdiff(w(single), w(fsdp)), "moved": maxdiff(w(single), w(base))}
    bf = train(base, data, root / "bf16", settings=settings(precision="bf16", gradient_checkpointing=True),
               dimension="honesty", devices=n, launch=True)
    mb = Manifest.read(bf).parameters
    lb = hist(bf)
    report["bf16"] = {"param_dtype": mb.get("param_dtype"), "compute_dtype": mb.get("compute_dtype"),
                      "peak_gpu_mib": mb.get("peak_gpu_mib"), "saved_dtype": str(next(iter(w(bf).values())).dtype),
                      "first_loss": lb[0], "last_loss": lb[-1]}

    # kill the launcher's process group after the step-2 checkpoint, then resume
    marker, out = root / "held", root / "killed"
    job = root / "job.py"
    job.write_text(textwrap.dedent(f"""
        from alignment.dpo import DPOSettings, train
        train({str(base)!r}, {data!r}, {str(out)!r}, dimension="honesty", devices={n}, launch=True,
              callbacks=["h3ops.testing:HoldAtCheckpoint"], settings=DPOSettings.preset("test", max_steps={STEPS},
              batch_size={4 * n}, per_device_batch_size=2, learning_rate=1e-4))
    """))
    path = [str(ROOT), str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "HOLD_MARKER": str(marker), "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.Popen([sys.executable, str(job)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(root / "job.log", "wb"))
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.3)
    held = marker.exists()
    for pgid in ([int(marker.read_text())] if held else []) + [proc.pid]:
        try:  # the job exits by itself once its launcher's group is gone
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    resumed = train(base, data, out, settings=settings(), dimension="honesty", devices=n, launch=True) if held else None
    report["resume"] = {"held_at_checkpoint": held,
                        "resumed_from_step": Manifest.read(resumed).parameters["resumed_from_step"] if resumed else None,
                        "max_weight_diff_vs_uninterrupted": maxdiff(w(fsdp), w(resumed)) if resumed else None}
    if not held:
        report["resume"]["log_tail"] = (root / "job.log").read_text()[-2000:]

    checks = {
        "fsdp_ran": report["fp32"]["distributed_type"] == "FSDP",
        "fp32_losses_match": report["fp32"]["max_loss_diff"] <= ATOL,
        "fp32_weights_match": report["fp32"]["max_weight_diff"] <= ATOL,
        "trained": report["fp32"]["moved"] > ATOL,  # 6 Adam steps at lr 1e-4 move a weight ~6e-4
        "bf16_compute": report["bf16"]["compute_dtype"] == "bfloat16",
        "bf16_learns": lb[-1] < lb[0],
        "saved_in_base_dtype": report["bf16"]["saved_dtype"] == "torch.float32",
        "resumed_from_2": report["resume"]["resumed_from_step"] == 2,
        "resume_matches": resumed is not None and report["resume"]["max_weight_diff_vs_uninterrupted"] <= ATOL,
    }
    report["atol"] = ATOL
    report["checks"] = checks
    report["ok"] = all(checks.values())
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
