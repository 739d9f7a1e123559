"""Parse time of the whole dags/ folder (target < 2 s), measured in fresh interpreters.

    .venv/bin/python bench/dags_bench.py [--runs 5]

Each run is a new process (what the DAG processor pays): Airflow's own import, then DagBag over
dags/. Reported: the DagBag fill time alone and the process's total, plus the heavy modules the
parse imported (must be none).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, sys, time, resource
t0 = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
t1 = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
t2 = time.perf_counter()
heavy = sorted(m for m in ("torch", "transformers", "trl", "mlflow", "peft", "lm_eval") if m in sys.modules)
print("@@" + json.dumps({"airflow_import_s": t1 - t0, "dagbag_s": t2 - t1, "dags": len(bag.dags),
                         "errors": len(bag.import_errors), "heavy": heavy,
                         "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="h3ops-dagbench-")
    env = {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__UNIT_TEST_MODE": "True"}
    runs = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "dags")], capture_output=True, text=True,
                             env=env, cwd=ROOT, check=True)
        runs.append(json.loads(out.stdout.split("@@", 1)[1]))
    med = {k: statistics.median(r[k] for r in runs) for k in ("airflow_import_s", "dagbag_s", "peak_rss_mb")}
    print(json.dumps({"runs": args.runs, "median": med, "dags": runs[0]["dags"], "errors": runs[0]["errors"],
                      "heavy_modules": runs[0]["heavy"], "load": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
