"""`h3ops up` / `h3ops down` on real processes: rclone S3, MLflow server, Airflow 3 (SQLite mode)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid

import psutil
import pytest

from h3ops import names
from infra.local import procs, stack
from infra.local.airflow_api import AirflowAPI
from tests.pipeline_helpers import tiny_config

pytestmark = pytest.mark.slow


def _stack(*args, timeout=480):
    return subprocess.run([sys.executable, "-m", "infra.local.stack", *args], capture_output=True, text=True,
                          timeout=timeout)


def _http(method, url, data=None):
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
        return resp.status, raw


def test_up_twice_down_and_resume(tmp_path):
    home = tmp_path / "h3ops"
    ports = dict(zip(("s3", "mlflow", "airflow"), [procs.free_port() for _ in range(3)]))
    # An empty DAG folder: the project's DAGs must not start real work inside this test.
    (tmp_path / "dags").mkdir()
    port_args = [a for key, port in ports.items() for a in (f"--{key}-port", str(port))]
    port_args += ["--dags-folder", str(tmp_path / "dags")]
    lay = stack.Layout(home)
    members, exp = [], ""
    try:
        first = _stack("up", "--home", str(home), *port_args, "--gpus", "2", "--timeout", "420")
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"Airflow UI    http://127.0.0.1:{ports['airflow']}" in first.stdout
        assert "login admin / " in first.stdout
        recs = {n: procs.read_record(lay.state, n) for n in stack.SERVICES}
        assert all(r is not None and r.alive() for r in recs.values())
        # Each server leads its own process group.
        assert all(os.getpgid(r.pid) == r.pid for r in recs.values())

        # MLflow answers and stores artifacts in the S3 bucket (proxied artifact upload).
        mlflow = f"http://127.0.0.1:{ports['mlflow']}"
        assert _http("GET", f"{mlflow}/health")[1].strip() == b"OK"
        exp = f"stack-{uuid.uuid4().hex[:8]}"
        status, body = _http("POST", f"{mlflow}/api/2.0/mlflow/experiments/create", json.dumps({"name": exp}).encode())
        assert status == 200 and json.loads(body)["experiment_id"]
        status, _ = _http("PUT", f"{mlflow}/api/2.0/mlflow-artifacts/artifacts/{exp}/probe.txt", b"hello")
        assert status == 200
        s3 = stack.s3_client(ports)
        s3.head_bucket(Bucket=names.ARTIFACT_BUCKET)
        obj = s3.get_object(Bucket=names.ARTIFACT_BUCKET, Key=f"{names.MLFLOW_ARTIFACT_PREFIX}/{exp}/probe.txt")
        assert obj["Body"].read() == b"hello"

        # Airflow is healthy; the gpu pool and both connections exist.
        api = AirflowAPI(f"http://127.0.0.1:{ports['airflow']}")
        # The machine is shared and loaded: poll the health condition instead of trusting one answer.
        health = procs.wait_for(lambda: (h := api.health()) and h["scheduler"]["status"] == "healthy" and h,
                                "Airflow health", 120, every_s=2)
        assert health["metadatabase"]["status"] == "healthy"
        api.login(*stack.admin_login(lay))
        pool = api.get_pool(names.GPU_POOL)
        assert pool is not None and pool["slots"] == 2
        conn = api.get_connection(names.MLFLOW_CONN_ID)
        assert conn is not None and conn["port"] == ports["mlflow"]
        s3conn = api.get_connection(names.S3_CONN_ID)
        assert s3conn is not None and str(ports["s3"]) in s3conn["extra"]

        # Idempotent: a second `up` starts nothing and keeps the same processes.
        pipeline = tiny_config(tmp_path / "pipeline")
        again = _stack("up", "--home", str(home), *port_args, "--gpus", "3", "--timeout", "120",
                       "--config", os.path.relpath(pipeline))
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.count("already running") == len(stack.SERVICES)
        assert {n: procs.read_record(lay.state, n).pid for n in stack.SERVICES} == {n: r.pid for n, r in recs.items()}
        assert api.get_pool(names.GPU_POOL)["slots"] == 3  # pool and connections are re-applied
        # --config sets the Variable every run reads its config from, as an absolute path (the
        # components run in the stack's home, not here).
        assert api.get_variable(names.CONFIG_VARIABLE) == str(pipeline.resolve())

        members = [p for r in recs.values() for p in procs.group_members(r)]
        assert len(members) >= len(stack.SERVICES)
    finally:
        down = _stack("down", "--home", str(home), timeout=120)
    assert down.returncode == 0, down.stderr
    time.sleep(0.5)
    left = [p.pid for p in members if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], f"processes left after down: {left}"
    for key, port in ports.items():
        assert not procs.port_in_use(port), f"{key} port {port} still bound"
    assert not list(lay.state.glob("*.pid.json"))
    # Data stays for the next `up`.
    assert (home / "mlflow" / "mlflow.db").exists() and (home / "airflow" / "airflow.db").exists()
    assert (home / "s3" / names.ARTIFACT_BUCKET / names.MLFLOW_ARTIFACT_PREFIX / exp / "probe.txt").exists()
    assert (home / "logs" / "airflow-scheduler.log").stat().st_size > 0

    # `up` again resumes with the same state: experiment, pool, connections and admin login survive.
    password = stack.admin_login(lay)
    try:
        resumed = _stack("up", "--home", str(home), *port_args, "--gpus", "3", "--timeout", "420")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "already running" not in resumed.stdout
        status, body = _http("GET", f"{mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name={exp}")
        assert status == 200 and json.loads(body)["experiment"]["name"] == exp
        assert stack.admin_login(lay) == password
        api = AirflowAPI(f"http://127.0.0.1:{ports['airflow']}")
        api.login(*password)
        assert api.get_pool(names.GPU_POOL)["slots"] == 3
        assert api.get_connection(names.MLFLOW_CONN_ID)["port"] == ports["mlflow"]
    finally:
        down = _stack("down", "--home", str(home), timeout=120)
    assert down.returncode == 0, down.stderr
    assert not any(procs.port_in_use(port) for port in ports.values())
