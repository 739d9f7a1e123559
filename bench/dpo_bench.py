"""DPO benchmark: `alignment.dpo.train` (what `h3ops train dpo` runs) against a bare TRL script on
the same model, data and settings, each in a fresh process, in the same run.

Per job: seconds per optimizer step (TRL's train_runtime / steps: the training loop only), the
whole job's wall time (imports, load, validation, training, save), and the process's peak RSS.
The overhead ratio is ours / bare.

  OMP_NUM_THREADS=2 .venv/bin/python bench/dpo_bench.py --sizes tiny smollm2 --steps 20 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Settings both jobs share: the cpu-demo preset (batch 4 = 2 × 2 accumulation, length 256, fp32).
OURS = """
import json, resource, sys, time
t = time.perf_counter()
from alignment.dpo import DPOSettings, train
base, data, out, steps = sys.argv[1:5]
ckpt = train(base, data, out, dimension="harmlessness",
             settings=DPOSettings.preset("cpu-demo", max_steps=int(steps), save_steps=10**6))
m = json.load(open(f"{ckpt}/h3ops.json"))["parameters"]["metrics"]
print("RESULT " + json.dumps({"wall": time.perf_counter() - t, "runtime": m["train_runtime_s"],
                              "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

BARE = """
import json, resource, sys, time
t = time.perf_counter()
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
base, data, out, steps = sys.argv[1:5]
rows = [json.loads(l) for l in open(f"{data}/train.jsonl")]
ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                         "chosen": [{"role": "assistant", "content": r["chosen"]}],
                         "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
tok = AutoTokenizer.from_pretrained(base)
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
ref = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
args = DPOConfig(output_dir=out + ".work", use_cpu=True, bf16=False, per_device_train_batch_size=2,
                 gradient_accumulation_steps=2, learning_rate=5e-6, max_steps=int(steps), lr_scheduler_type="cosine",
                 warmup_steps=0.1, beta=0.1, max_length=256, gradient_checkpointing=False, save_strategy="no",
                 logging_steps=1, report_to=[], seed=0, disable_tqdm=True)
trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)
trainer.train()
trainer.model.save_pretrained(out)
tok.save_pretrained(out)
runtime = next(h for h in reversed(trainer.state.log_history) if "train_runtime" in h)["train_runtime"]
print("RESULT " + json.dumps({"wall": time.perf_counter() - t, "runtime": runtime,
                              "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def job(body: str, base: Path, data: str, out: Path, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", body, str(base), data, str(out), str(steps)],
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    r = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])
    r["s_per_step"] = r["runtime"] / steps
    return r


def prepare(size: str, root: Path) -> tuple[Path, str]:
    sys.path.insert(0, str(ROOT))
    from alignment.demo_data import build_demo_datasets

    if size == "tiny":
        from h3ops.testing import make_tiny_llama

        base = make_tiny_llama(root / "tiny")
    else:
        from h3ops.smollm2 import ensure_smollm2

        base = ensure_smollm2()
    refs = build_demo_datasets(root / "data", per_dimension=64)
    return base, refs["harmlessness"].uri


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", nargs="+", default=["tiny", "smollm2"])
    p.add_argument("--steps", nargs="+", type=int, default=[20, 3])
    p.add_argument("--repeats", type=int, default=1, help="alternate bare/ours this many times, report the best")
    ns = p.parse_args()
    print(f"uptime before: {os.popen('uptime').read().strip()}")
    print("| model | steps | bare s/step | ours s/step | ratio | bare job s | ours job s | ratio | "
          "bare peak RSS MiB | ours peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as tmp:
        root = Path(tmp)
        for size, steps in zip(ns.sizes, ns.steps):
            base, data = prepare(size, root)
            res: dict[str, list[dict]] = {"bare": [], "ours": []}
            for i in range(ns.repeats):
                for kind, body in (("bare", BARE), ("ours", OURS)):
                    res[kind].append(job(body, base, data, root / f"{size}-{kind}-{i}", steps))
            b = min(res["bare"], key=lambda r: r["s_per_step"])
            o = min(res["ours"], key=lambda r: r["s_per_step"])
            print(f"| {size} | {steps} | {b['s_per_step']:.3f} | {o['s_per_step']:.3f} | "
                  f"{o['s_per_step'] / b['s_per_step']:.3f} | {b['wall']:.1f} | {o['wall']:.1f} | "
                  f"{o['wall'] / b['wall']:.3f} | {b['rss_mib']:.0f} | {o['rss_mib']:.0f} |", flush=True)
    print(f"uptime after: {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
    main()
