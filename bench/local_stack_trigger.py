"""The data-triggered loop on the local stack, as a user runs it, timed.

`h3ops up --config PIPELINE` (the Variable h3ops_config) → the three DAGs unpaused → preference
files land in the stack's S3 bucket → preference_ingest's sensor picks them up → asset events →
the scheduler itself starts continual_dpo_baseline, whose asset event starts continual_alignment.
Nothing is triggered by hand. Prints one JSON line with the time of each stage.

  PYTHONPATH=$PWD python bench/local_stack_trigger.py --home /tmp/h3ops-trigger
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from h3ops import names  # noqa: E402
from infra.local import stack  # noqa: E402
from infra.local.airflow_api import AirflowAPI  # noqa: E402
from tests.pipeline_helpers import DIMS, ROOT, tiny_config, write_pairs  # noqa: E402

DAGS = ("preference_ingest", "continual_dpo_baseline", "continual_alignment")


def _runs(api: AirflowAPI, dag_id: str) -> list[dict]:
    status, body = api.request("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after")
    return body.get("dag_runs", []) if status == 200 else []


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--port-base", type=int, default=19100)
    p.add_argument("--deadline", type=float, default=1500)
    args = p.parse_args()
    home = args.home.resolve()
    ports = {"s3": args.port_base, "mlflow": args.port_base + 1, "airflow": args.port_base + 2}
    bucket = f"s3://{names.ARTIFACT_BUCKET}"
    cfg = tiny_config(home / "project", tracking_uri=f"http://127.0.0.1:{ports['mlflow']}", project="trigger",
                      dimensions=[{"name": d, "landing": f"{bucket}/landing/{d}"} for d in DIMS],
                      store=f"{bucket}/h3ops")
    port_args = [f"--{k}-port={v}" for k, v in ports.items()]
    t0 = time.monotonic()
    up = subprocess.run([sys.executable, "-m", "infra.local.stack", "up", "--home", str(home), *port_args,
                         "--config", str(cfg), "--gpus", "2"], cwd=ROOT, text=True, capture_output=True)
    if up.returncode:
        print(up.stdout, up.stderr, file=sys.stderr)
        return 1
    timings = {"up_s": round(time.monotonic() - t0, 1)}
    try:
        api = AirflowAPI(f"http://127.0.0.1:{ports['airflow']}")
        api.login(*stack.admin_login(stack.Layout(home)))
        for dag_id in DAGS:
            api.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        # Land the files (what a user's upload does), then only watch.
        s3 = stack.s3_client(ports)
        for d in DIMS:
            f = write_pairs(home / "files" / d, d)
            s3.upload_file(str(f), names.ARTIFACT_BUCKET, f"landing/{d}/{f.name}")
        landed = time.monotonic()
        done: dict[str, dict] = {}
        while time.monotonic() - landed < args.deadline and "continual_alignment" not in done:
            for dag_id in DAGS:
                runs = [r for r in _runs(api, dag_id) if dag_id == "preference_ingest"
                        or r.get("run_type") == "asset_triggered"]
                if dag_id not in done and runs and runs[0]["state"] in ("success", "failed"):
                    done[dag_id] = {"state": runs[0]["state"], "run_type": runs[0]["run_type"],
                                    "after_landing_s": round(time.monotonic() - landed, 1)}
            time.sleep(5)
        timings["runs"] = done
        print(json.dumps(timings))
        return 0 if done.get("continual_alignment", {}).get("state") == "success" else 1
    finally:
        subprocess.run([sys.executable, "-m", "infra.local.stack", "down", "--home", str(home)], cwd=ROOT,
                       capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
