"""DAG integrity: every DAG parses, has the intended shape, and parsing stays light.

The import-weight check runs in a fresh interpreter: the test session itself has torch loaded.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "dags"
HEAVY = ("torch", "transformers", "trl", "mlflow", "peft", "datasets", "lm_eval")

_PARSE = """
import json, sys, time
t = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
seconds = time.perf_counter() - t
print("@@" + json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()},
                         "dags": sorted(bag.dag_ids), "seconds": seconds,
                         "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag
    return DagBag(dag_folder=str(DAGS))


def test_dags_parse_without_heavy_imports():
    out = subprocess.run([sys.executable, "-c", _PARSE, str(DAGS)], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.split("@@", 1)[1])
    assert report["errors"] == {}
    assert {"preference_ingest", "continual_alignment", "continual_dpo_baseline",
            "promote_to_serving", "merge_benchmark"} <= set(report["dags"])
    assert report["heavy"] == [], f"DAG parsing imported {report['heavy']}"


def test_no_import_errors_and_defaults(dagbag):
    assert dagbag.import_errors == {}
    for dag in dagbag.dags.values():
        assert "h3ops" in dag.tags
        assert "config" in dag.params, dag.dag_id
        for t in dag.tasks:
            assert t.owner == "h3ops", (dag.dag_id, t.task_id)
        # A DAG with a cycle does not get into the bag; check the order is a real topological one.
        assert len(dag.topological_sort()) == len(dag.tasks)


def _upstream(dag, task_id):
    return set(dag.get_task(task_id).upstream_task_ids)


def test_continual_alignment_shape(dagbag):
    dag = dagbag.dags["continual_alignment"]
    train = dag.get_task("train")
    assert train.pool == "gpu" and train.queue == "gpu"
    assert dag.get_task("merge").pool == "gpu" and dag.get_task("evaluate").pool == "gpu"
    assert {"plan", "base_model"} <= _upstream(dag, "train")
    assert "train" in _upstream(dag, "register_candidate")
    assert "register_candidate" in _upstream(dag, "merge")
    assert "merge" in _upstream(dag, "register_merged")
    assert "models_to_evaluate" in _upstream(dag, "evaluate")
    assert {"evaluate", "register_merged"} <= _upstream(dag, "gate")
    assert "gate" in _upstream(dag, "promote")
    # Mapped over the dimensions with data, not one static task per dimension.
    from airflow.sdk.definitions.mappedoperator import MappedOperator
    assert isinstance(train, MappedOperator) and isinstance(dag.get_task("evaluate"), MappedOperator)
    assert {"method", "parameters", "dimensions"} <= set(dag.params)
    # Scheduled on the preference assets.
    names = {a.name for a in dag.timetable.asset_condition.objects}
    assert {"h3ops.preferences.helpfulness", "h3ops.preferences.honesty",
            "h3ops.preferences.harmlessness"} <= names


def test_preference_ingest_shape(dagbag):
    dag = dagbag.dags["preference_ingest"]
    assert dag.get_task("wait_for_files").__class__.__name__ == "LandingSensor"
    assert "wait_for_files" in _upstream(dag, "dimensions_with_files")
    assert "dimensions_with_files" in _upstream(dag, "validate")
    assert [o.name for o in dag.get_task("validate").outlets] == ["h3ops-preferences"]


def test_baseline_and_serving_shape(dagbag):
    base = dagbag.dags["continual_dpo_baseline"]
    assert base.get_task("continual").pool == "gpu"
    assert "continual" in _upstream(base, "register_stages")
    serve = dagbag.dags["promote_to_serving"]
    assert serve.params["action"] == "handoff"
    assert "apply" in _upstream(serve, "handoff")
    assert "handoff" in _upstream(serve, "notify_serving")  # the running server switches last
    assert serve.default_args["retries"] == 0


def test_merge_benchmark_shape(dagbag):
    dag = dagbag.dags["merge_benchmark"]
    from airflow.sdk.definitions.mappedoperator import MappedOperator
    task = dag.get_task("merge_and_evaluate")
    assert isinstance(task, MappedOperator) and task.pool == "gpu"
    assert {"methods", "candidates", "base_model"} <= _upstream(dag, "merge_and_evaluate")
    assert "merge_and_evaluate" in _upstream(dag, "leaderboard")
    assert "methods" in dag.params
