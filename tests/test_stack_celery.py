"""Airflow's CeleryExecutor for real: Redis broker, PostgreSQL metadata, a worker on queue `gpu`.

A one-task DAG runs on the `gpu` queue. Its first try waits (it marks that it started); the test
kills the whole Celery worker process group with SIGKILL (task included), starts a new worker, and
the scheduler's heartbeat-timeout handling (15 s here instead of 300 s) retries the task on it; the
second try writes the result file.
Every wait is a condition polled against a generous deadline, never a fixed sleep.
"""
from __future__ import annotations

import json
import random
import textwrap
import uuid

import psutil
import pytest

from h3ops import names
from infra.local import procs, stack
from infra.local.airflow_api import AirflowAPI
from tests.fixtures.celery_stack import AIRFLOW, PG, celery_env, clear_redis, drop_database, sql

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

DAG_ID = "h3ops_celery_probe"

DAG_FILE = '''
import json, os, time
from datetime import datetime, timedelta
from pathlib import Path
from airflow.sdk import dag, task, get_current_context

OUT = Path({out!r})

@dag(dag_id={dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
     default_args={{"retries": 2, "retry_delay": timedelta(seconds=1)}})
def probe():
    @task(queue={queue!r})
    def write_on_gpu_queue():
        import psutil
        ti = get_current_context()["ti"]
        if not (OUT / "started").exists():
            # First try: announce, then wait to be killed with the worker.
            (OUT / "started").write_text(json.dumps({{"try": ti.try_number, "pid": os.getpid()}}))
            end = time.monotonic() + 240
            while time.monotonic() < end:
                time.sleep(0.5)
            raise RuntimeError("the worker was not killed")
        (OUT / "result.json").write_text(json.dumps({{
            "try": ti.try_number, "pid": os.getpid(),
            "ancestors": [p.pid for p in psutil.Process().parents()]}}))
    write_on_gpu_queue()

probe()
'''


def test_celery_gpu_queue_survives_a_killed_worker(tmp_path):
    import subprocess

    db = f"h3ops_celery_{uuid.uuid4().hex[:10]}"
    redis_db = random.randint(1, 15)
    prefix = f"h3ops-test-{uuid.uuid4().hex[:8]}:"
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "celery_probe.py").write_text(
        textwrap.dedent(DAG_FILE.format(out=str(out), dag_id=DAG_ID, queue=names.GPU_QUEUE)))
    api_port = procs.free_port()
    env = celery_env(tmp_path, db, redis_db, prefix, api_port,
                     AIRFLOW__CORE__DAGS_FOLDER=str(tmp_path / "dags"), AIRFLOW__CORE__PARALLELISM="2",
                     AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False", AIRFLOW__CELERY__WORKER_CONCURRENCY="1")
    state, logs = tmp_path / "state", tmp_path / "logs"
    started: list[procs.ProcRecord] = []

    def start(name, *args):
        rec = procs.start(name, [AIRFLOW, *args], env, state, logs, cwd=tmp_path)
        started.append(rec)
        return rec

    def worker(name):
        return start(name, "celery", "worker", "--queues", names.GPU_QUEUE, "--concurrency", "1",
                     "--skip-serve-logs", "--without-mingle", "--without-gossip")

    stack.ensure_database(PG, db)
    try:
        subprocess.run([AIRFLOW, "db", "migrate"], env=env, cwd=tmp_path, check=True, timeout=180,
                       capture_output=True)
        api_rec = start("api-server", "api-server")
        core = [api_rec, start("scheduler", "scheduler"), start("dag-processor", "dag-processor")]
        first_worker = worker("worker-1")
        api = AirflowAPI(f"http://127.0.0.1:{api_port}")
        procs.wait_for(lambda: api.health().get("metadatabase", {}).get("status") == "healthy",
                       "api-server", 180, core, every_s=1)
        procs.wait_for(lambda: sql(db, "SELECT 1 FROM dag WHERE dag_id = %s", (DAG_ID,)),
                       "DAG parsed", 120, core, every_s=1)
        api.login("admin", "unused")  # all-admins mode hands out a token
        status, body = api.request("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None})
        assert status in (200, 201), body

        # Try 1 runs on the gpu-queue worker; kill that worker's whole process group mid-task.
        procs.wait_for(lambda: (out / "started").exists(), "first try started", 180,
                       [*core, first_worker], every_s=0.5)
        task_pid = json.loads((out / "started").read_text())["pid"]
        assert first_worker.pid in [p.pid for p in psutil.Process(task_pid).parents()]
        # SIGKILL, like a lost host: no warm shutdown, the task cannot report anything.
        doomed = procs.group_members(first_worker)
        for proc in doomed:
            proc.kill()
        assert not psutil.wait_procs(doomed, timeout=60)[1]
        procs.stop(first_worker)  # reaps the leader
        assert not psutil.pid_exists(task_pid) or psutil.Process(task_pid).status() == psutil.STATUS_ZOMBIE
        second_worker = worker("worker-2")

        procs.wait_for(lambda: sql(db, "SELECT state FROM dag_run WHERE dag_id = %s", (DAG_ID,))
                       == [("success",)], "run succeeded after the retry", 240,
                       [*core, second_worker], every_s=1)
        result = json.loads((out / "result.json").read_text())
        assert result["try"] >= 2
        assert second_worker.pid in result["ancestors"]  # ran under the new Celery worker
        ((queue, try_number, state_),) = sql(
            db, "SELECT queue, try_number, state FROM task_instance WHERE dag_id = %s", (DAG_ID,))
        assert (queue, state_) == (names.GPU_QUEUE, "success") and try_number == result["try"]
    finally:
        procs.stop(started, grace_s=10)
        clear_redis(redis_db, prefix)
        drop_database(db)
