"""1 process vs N launched processes (torchrun; gloo/DDP on CPUs, FSDP on GPUs) for the same DPO
job and global batch: wall time, largest loss and weight differences.

Usage: PYTHONPATH=. OMP_NUM_THREADS=1 python bench/distributed_dpo_bench.py [--devices 2] [--steps 4]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

from alignment.dataset import build_dataset
from alignment.dpo import DPOSettings, train
from h3ops.checkpoint import Manifest
from h3ops.testing import make_tiny_llama


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp())
    base = make_tiny_llama(root / "base")
    src = root / "pairs.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"Question: what is {i} plus {i}?", "chosen": f"Answer: {2 * i}.",
                                       "rejected": "I cannot help with that request.", "dimension": "honesty",
                                       "source": "bench"}) + "\n" for i in range(32)))
    data = build_dataset([src], root / "ds", dimension="honesty", eval_holdout=0).uri
    settings = DPOSettings.preset("test", max_steps=args.steps, batch_size=2 * args.devices, per_device_batch_size=2)
    runs = {}
    for n in (1, args.devices):
        t = time.perf_counter()
        out = train(base, data, root / f"p{n}", settings=settings, dimension="honesty", devices=n)
        runs[n] = {"wall_s": round(time.perf_counter() - t, 1), "out": out,
                   "type": Manifest.read(out).parameters.get("distributed_type")}
    a, b = (load_file(runs[n]["out"] / "model.safetensors") for n in (1, args.devices))
    la, lb = ([h["loss"] for h in json.loads((runs[n]["out"] / "train_history.json").read_text())]
              for n in (1, args.devices))
    print(json.dumps({
        "steps": args.steps, "global_batch": settings.batch_size,
        "wall_s": {str(n): r["wall_s"] for n, r in runs.items()},
        "distributed_type": runs[args.devices]["type"],
        "max_loss_diff": max(abs(x - y) for x, y in zip(la, lb)),
        "max_weight_diff": max((a[k] - b[k]).abs().max().item() for k in a),
        "losses": la}, indent=1))


if __name__ == "__main__":
    main()
