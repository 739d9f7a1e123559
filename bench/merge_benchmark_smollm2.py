"""The paper's merge-versus-mix experiment on SmolLM2-135M-Instruct, CPU, embedded stack.

Real pairs from the offline data packages land per dimension; the ingest and continual-DPO
baseline DAGs run; one DPO candidate per dimension is trained and registered; then the
merge_benchmark DAG merges them with every entry of h3ops/merge_benchmark.yaml, trains the
heuristic data-mixture baseline at each ratio, evaluates everything with cpu-3h and logs the
leaderboard. Prints the leaderboard rows as JSON (also in <home>/work/benchmark/*/).

Usage: PYTHONPATH=. OMP_NUM_THREADS=1 python bench/merge_benchmark_smollm2.py [--home DIR]
       [--pairs 32] [--steps 4] [--limit 1]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default=".h3ops-bench16")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--limit", type=int, default=1)
    args = ap.parse_args()
    from h3ops import demo

    home = Path(args.home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    demo._environment(home)
    ns = argparse.Namespace(config=None, tiny=False, steps=args.steps, limit=args.limit)
    cfg, cfg_path = demo._config(ns, home)
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.db import initdb

    from h3ops.pipeline import run_step

    initdb()
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    for dag in bag.dags.values():
        for task in dag.tasks:
            task.retries = 0
    timings: list = []
    t0 = time.perf_counter()
    # The demo's story: stage lines on the terminal, Airflow's and the libraries' logs in a file.
    with demo.Story(home / "bench.log", verbose=False) as story:
        base = run_step("prepare_base", cfg)
        run_step("bootstrap_production", cfg, {"base": base})
        demo.land_preferences(cfg, args.pairs)
        conf = {"config": str(cfg_path)}
        demo._run(bag, "preference_ingest", conf, timings, story)
        demo._run(bag, "continual_dpo_baseline", conf, timings, story)
        for ds in run_step("datasets", cfg):
            t = time.perf_counter()
            trained = run_step("train", cfg, {"base": base, "dataset": ds, "dimension": ds["dimension"]})
            run_step("register", cfg, {"path": trained["path"], "kind": "candidate", "dimension": ds["dimension"],
                                       "data_digest": ds["digest"], "parents": [base], "base": base})
            timings.append((f"train {ds['dimension']}", "success", time.perf_counter() - t))
            story.say(f"  candidate {ds['dimension']} in {time.perf_counter() - t:.0f} s")
        demo._run(bag, "merge_benchmark", conf, timings, story)
    board = demo._xcom(bag, "merge_benchmark", "leaderboard")
    result = {"total_s": round(time.perf_counter() - t0), "timings": [[d, s, round(x)] for d, s, x in timings],
              "run_id": board["run_id"], "folder": board["folder"], "rows": board["rows"]}
    (home / "leaderboard.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
