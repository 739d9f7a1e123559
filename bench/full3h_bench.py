"""full-3h wall time per benchmark, offline: the fixtures of tests/data/full3h (published layouts),
the scripted judge process of tests/fixtures/full3h_judge.py on loopback (it also answers MD-Judge's
template on its completions endpoint, standing in for a served MD-Judge). Models: the tiny test Llama and SmolLM2-135M (h3ops.smollm2).

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python bench/full3h_bench.py [--skip-smollm2]

Prints one JSON object. Timings depend on machine load (recorded); they are never test assertions.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(model: Path, tmp: Path) -> dict:
    from evaluation import run_suite

    t0 = time.monotonic()
    res = run_suite(model, "full-3h", cache_dir=tmp / f"cache-{model.name}")
    return {"wall_s": round(time.monotonic() - t0, 1), "per_benchmark_s": res.timings,
            "metrics": {k: round(v, 2) for k, v in res.metrics.items()},
            "averages": {k: round(v, 2) for k, v in res.scores.averages().items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-smollm2", action="store_true")
    args = ap.parse_args()
    from evaluation.sandbox import namespaces_available
    from h3ops.testing import make_tiny_llama
    from tests.fixtures.full3h_judge import JudgeProcess

    out = {"load_before": os.getloadavg(), "omp_threads": os.environ.get("OMP_NUM_THREADS")}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        judge = JudgeProcess(tmp / "judge.jsonl")
        os.environ.update({"H3OPS_EVAL_DATA_DIR": str(ROOT / "tests/data/full3h"), "HF_DATASETS_OFFLINE": "1",
                           "H3OPS_JUDGE_BASE_URL": judge.base_url, "H3OPS_SAFETY_JUDGE_BASE_URL": judge.base_url})
        if namespaces_available() is not None:
            os.environ["H3OPS_SANDBOX_ALLOW_DEGRADED"] = "1"
        try:
            out["tiny"] = run(make_tiny_llama(tmp / "tiny"), tmp)
            if not args.skip_smollm2:
                from h3ops.smollm2 import ensure_smollm2

                t0 = time.monotonic()
                model = ensure_smollm2()
                out["smollm2_prepare_s"] = round(time.monotonic() - t0, 1)
                out["smollm2"] = run(model, tmp)
        finally:
            judge.stop()
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
