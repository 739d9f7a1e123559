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
    # A GPU task registers its own output (its folder is on that worker only): train → merge → gate.
    assert "train" in _upstream(dag, "merge")
    assert not {"register_candidate", "register_merged"} & set(dag.task_ids)
    assert "models_to_evaluate" in _upstream(dag, "evaluate")
    assert {"evaluate", "merge"} <= _upstream(dag, "gate")
    assert "gate" in _upstream(dag, "promote")
    # Mapped over the dimensions with data, not one static task per dimension.
    from airflow.sdk.definitions.mappedoperator import MappedOperator
    assert isinstance(train, MappedOperator) and isinstance(dag.get_task("evaluate"), MappedOperator)
    assert {"method", "parameters", "dimensions"} <= set(dag.params)
    # Scheduled on the continual baseline's asset: test_alignment_waits_for_the_continual_baseline_asset.


def test_preference_ingest_shape(dagbag):
    dag = dagbag.dags["preference_ingest"]
    assert dag.get_task("wait_for_files").__class__.__name__ == "LandingSensor"
    assert "wait_for_files" in _upstream(dag, "dimensions_with_files")
    assert "dimensions_with_files" in _upstream(dag, "validate")
    assert [o.name for o in dag.get_task("validate").outlets] == ["h3ops-preferences"]  # lineage
    # The run's one scheduling event: after every validation, even when one of them failed.
    announce = dag.get_task("announce")
    assert [o.name for o in announce.outlets] == ["h3ops.preferences"]
    assert "validate" in _upstream(dag, "announce") and not announce.downstream_task_ids
    assert announce.trigger_rule == "all_done_min_one_success"
    # …while a failed validation still fails the run: a leaf that needs every validation.
    leaf = dag.get_task("all_validated")
    assert _upstream(dag, "all_validated") == {"validate"} and leaf.trigger_rule == "all_success"
    assert {t.task_id for t in dag.tasks if not t.downstream_task_ids} == {"announce", "all_validated"}


def test_baseline_and_serving_shape(dagbag):
    base = dagbag.dags["continual_dpo_baseline"]
    assert base.get_task("continual").pool == "gpu"
    assert "register_stages" not in base.task_ids  # the GPU task registers its stages itself
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


def test_alignment_waits_for_the_continual_baseline_asset(dagbag):
    """The wiring as parsed: preference data → baseline; the baseline's published asset → alignment."""
    align, base = dagbag.dags["continual_alignment"], dagbag.dags["continual_dpo_baseline"]
    assert {a.name for a in align.timetable.asset_condition.objects} == {"h3ops.continual_baseline"}
    # One asset, one event per ingest run: never the per-dimension ones (their events can reach
    # the scheduler in separate loops, test_one_ingest_run_starts_the_baseline_once…).
    assert {a.name for a in base.timetable.asset_condition.objects} == {"h3ops.preferences"}
    # Published only after every stage is registered and evaluated.
    assert [o.name for o in base.get_task("publish").outlets] == ["h3ops.continual_baseline"]
    assert {"evaluate", "continual"} <= _upstream(base, "publish")


def _scheduler_creates_runs() -> set[str]:
    """One pass of the real scheduler's run creation (SchedulerJobRunner._create_dagruns_for_dags,
    which evaluates each DAG's asset condition against the queued asset events); returns the
    dag_ids it created asset-triggered runs for."""
    from airflow.jobs.job import Job
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.sqlalchemy import prohibit_commit
    from sqlalchemy import select

    runner = SchedulerJobRunner(job=Job(), executors=[])
    with create_session() as session:
        before = set(session.scalars(select(DagRun.run_id)))
        with prohibit_commit(session) as guard:
            runner._create_dagruns_for_dags(guard, session)
        created = session.execute(select(DagRun.dag_id, DagRun.run_id, DagRun.run_type)).all()
    return {d for d, r, t in created if r not in before and str(getattr(t, "value", t)) == "asset_triggered"}


def _sync_dags_and_unpause(watched):
    """The project's DAGs serialized into the metadata DB as the dag-processor would, `watched`
    unpaused with no asset-triggered run or queued event left from an earlier test."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.models.asset import AssetDagRunQueue
    from airflow.models.dag import DagModel
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import delete, update

    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    bundle = manager.get_bundle("dags-folder")
    sync_bag_to_db(BundleDagBag(dag_folder=str(DAGS), bundle_path=bundle.path, bundle_name=bundle.name),
                   bundle.name, None)

    def reset(paused: bool):
        with create_session() as s:
            s.execute(delete(DagRun).where(DagRun.dag_id.in_(watched), DagRun.run_type == "asset_triggered"))
            s.execute(delete(AssetDagRunQueue).where(AssetDagRunQueue.target_dag_id.in_(watched)))
            s.execute(update(DagModel).where(DagModel.dag_id.in_(watched)).values(is_paused=paused))

    reset(paused=True)
    with create_session() as s:
        s.execute(update(DagModel).where(DagModel.dag_id.in_(watched)).values(is_paused=False))
    return lambda: reset(paused=True)


def _emit(asset_name: str, alias: str | None = None) -> None:
    """An asset event registered by Airflow's own AssetManager, as a succeeding task's outlet is;
    through `alias` as a task emitting on an alias does (the asset is created on its first event,
    as Airflow does when no DAG names it)."""
    from airflow.assets.manager import AssetManager
    from airflow.models.asset import AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from plugins.assets import PREFERENCE_ASSETS

    with create_session() as s:
        model = s.scalar(select(AssetModel).where(AssetModel.name == asset_name))
        if model is None and alias:
            known = {a.name: a for a in PREFERENCE_ASSETS.values()}[asset_name]
            model = AssetModel(name=known.name, uri=known.uri, group=known.group)
            s.add(model)
            s.flush()
        assert model is not None, f"asset {asset_name} is not known to Airflow"
        AssetManager.register_asset_change(asset=model, extra={"test": True}, session=s,
                                           source_alias_names=[alias] if alias else ())


def _finish_runs(dag_ids) -> None:
    """Every queued or running run of `dag_ids` ends (its tasks are not what is under test)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as s:
        s.execute(update(DagRun).where(DagRun.dag_id.in_(dag_ids), DagRun.state.in_(("queued", "running")))
                  .values(state="success"))


def test_one_ingest_run_starts_the_baseline_once_whatever_the_scheduler_loops(h3ops_airflow_db):
    """The race seen on the two-worker stack, made deterministic: one ingest run's mapped
    `validate` instances finish on different workers at different times, so their events reach the
    scheduler in separate loops (here: one scheduler pass after each). Events queued while the
    baseline's first run is active wait (max_active_runs=1) and start a second run when it ends:
    twice the work, the first run on part of the data, two continual sequences. The baseline must
    run once per ingest run: per-dimension events start nothing; the run's single
    `h3ops.preferences` event (its last task, after every validation) starts the baseline once."""
    watched = ("continual_alignment", "continual_dpo_baseline")
    cleanup = _sync_dags_and_unpause(watched)
    try:
        created = []
        for d in ("helpfulness", "honesty", "harmlessness"):  # one mapped validate each
            _emit(f"h3ops.preferences.{d}", alias="h3ops-preferences")
            created += sorted(_scheduler_creates_runs() & set(watched))
        _finish_runs(watched)  # what was started ends; anything still queued starts now
        created += sorted(_scheduler_creates_runs() & set(watched))
        assert created == [], f"per-dimension events, one scheduler loop each, started runs: {created}"

        _emit("h3ops.preferences")  # the ingest run's last task, once everything has landed
        assert _scheduler_creates_runs() & set(watched) == {"continual_dpo_baseline"}
        _finish_runs(watched)
        assert _scheduler_creates_runs() & set(watched) == set()  # nothing else was waiting
    finally:
        cleanup()


def test_scheduler_runs_the_baseline_before_the_alignment(h3ops_airflow_db):
    """Asset events through the real scheduler's semantics: new preference data queues the
    continual baseline, never the alignment DAG; only the baseline's published asset does."""
    watched = ("continual_alignment", "continual_dpo_baseline")
    cleanup = _sync_dags_and_unpause(watched)
    try:
        _emit("h3ops.preferences")  # what preference_ingest's `announce` emits when data landed
        assert _scheduler_creates_runs() & set(watched) == {"continual_dpo_baseline"}
        assert _scheduler_creates_runs() & set(watched) == set()  # nothing else is waiting
        _emit("h3ops.continual_baseline")  # what the baseline's `publish` task emits when it succeeds
        assert _scheduler_creates_runs() & set(watched) == {"continual_alignment"}
    finally:
        cleanup()
