"""The DAG order under the real Airflow scheduler process: new preference data runs the continual
baseline, never the alignment loop; the loop runs only on the baseline's `h3ops.continual_baseline`
asset event. So the gate never runs before its continual references exist (issue 12, item 1).

A real `airflow dag-processor` and `airflow scheduler` (LocalExecutor, PostgreSQL metadata) parse
this repository's dags/. Every pool has zero slots, so the scheduler creates asset-triggered runs
but starts no task (no training): run creation is what is under test. Asset events are registered
by Airflow's own AssetManager in a separate process, as a finishing task or the REST API would.
"""
from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from infra.local import procs, stack
from tests.fixtures.celery_stack import AIRFLOW, PG, drop_database, sql
from tests.pipeline_helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WATCHED = ("continual_dpo_baseline", "continual_alignment")

EMIT = """
import sys
from sqlalchemy import select
from airflow.assets.manager import AssetManager
from airflow.models.asset import AssetModel
from airflow.utils.session import create_session
with create_session() as s:
    for name in sys.argv[1:]:
        model = s.scalar(select(AssetModel).where(AssetModel.name == name))
        assert model is not None, name
        AssetManager.register_asset_change(asset=model, extra={"test": "scheduler-order"}, session=s)
"""


def _env(tmp: Path, db: str) -> dict[str, str]:
    import os
    import sys

    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_TRACKING"))}
    return {
        **base,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "AIRFLOW_HOME": str(tmp / "airflow"),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "1",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # Runs are created, no task ever starts: nothing trains in this test.
        "AIRFLOW__CORE__DEFAULT_POOL_TASK_SLOT_COUNT": "0",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex,
    }


def _runs(db: str) -> dict[str, int]:
    rows = sql(db, "SELECT dag_id, count(*) FROM dag_run WHERE run_type = 'asset_triggered' GROUP BY dag_id")
    return {d: n for d, n in rows if d in WATCHED}


def test_scheduler_runs_alignment_only_after_the_baseline_asset(tmp_path):
    db = f"h3ops_sched_{uuid.uuid4().hex[:10]}"
    env = _env(tmp_path, db)
    state, logs = tmp_path / "state", tmp_path / "logs"
    started: list[procs.ProcRecord] = []

    def emit(*assets: str) -> None:
        out = subprocess.run([str(Path(AIRFLOW).parent / "python"), "-c", EMIT, *assets], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]

    stack.ensure_database(PG, db)
    try:
        subprocess.run([AIRFLOW, "db", "migrate"], env=env, cwd=tmp_path, check=True, timeout=240,
                       capture_output=True)
        for name in ("dag-processor", "scheduler"):
            started.append(procs.start(name, [AIRFLOW, name], env, state, logs, cwd=tmp_path))
        # Parsed, serialized and unpaused, with their asset references recorded.
        procs.wait_for(lambda: len(sql(db, "SELECT 1 FROM dag JOIN serialized_dag USING (dag_id) WHERE "
                                           "dag.dag_id IN %s AND NOT is_paused", (WATCHED,))) == 2,
                       "project DAGs parsed", 240, started, every_s=1)
        # New data: the one `h3ops.preferences` event of an ingest run (its `announce` task, after
        # every validation; the per-dimension lineage events start nothing, tests/test_dags.py).
        emit("h3ops.preferences")
        procs.wait_for(lambda: _runs(db).get("continual_dpo_baseline"), "baseline run", 120, started, every_s=1)
        # The scheduler consumed every queued event in that pass: nothing is left to start the loop.
        assert sql(db, "SELECT target_dag_id FROM asset_dag_run_queue") == []
        assert _runs(db) == {"continual_dpo_baseline": 1}

        # The baseline's `publish` task succeeding: only now is the loop scheduled.
        assert sql(db, "SELECT r.dag_id FROM dag_schedule_asset_reference r JOIN asset a ON a.id = r.asset_id "
                       "WHERE a.name = 'h3ops.continual_baseline'") == [("continual_alignment",)]
        emit("h3ops.continual_baseline")
        procs.wait_for(lambda: _runs(db).get("continual_alignment"), "alignment run", 120, started, every_s=1)
        assert _runs(db) == {"continual_dpo_baseline": 1, "continual_alignment": 1}
    finally:
        try:
            procs.stop(started, grace_s=10)
        finally:
            drop_database(db)
