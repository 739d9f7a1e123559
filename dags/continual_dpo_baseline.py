"""continual_dpo_baseline: the sequential continual-DPO baseline the gate must beat.

Stage k trains from stage k-1 on the next dimension's data (order from the config, the paper's by
default); each stage is registered as `<project>-continual` with lineage and evaluated. Then
`publish` emits the `h3ops.continual_baseline` asset event (stages and data digests as extra):
continual_alignment is scheduled on that asset, so its gate runs only once the continual
references for the current data exist (and the gate itself only accepts a sequence trained on the
candidate's data: registry/references.py).

Scheduled on `h3ops.preferences`, which preference_ingest emits once per run in which new data
landed, after every dimension's validation: one ingest run, one baseline run, on all of its data.
Not on the per-dimension assets: a run's mapped validations finish at different times, and events
reaching the scheduler in separate loops would start one baseline run each (the first on part of
the data, each registering its own continual sequence). The sequence depends on every stage's
data, so it is retrained on any dimension's new data (stages whose inputs did not change find
their outputs and registered versions again).
"""
from __future__ import annotations

from airflow.sdk.exceptions import AirflowSkipException
from airflow.sdk import DAG, task

from plugins.assets import CONTINUAL_BASELINE, PREFERENCES
from plugins.defaults import DEFAULT_ARGS, START, config_param
from plugins.operators import run_in_task
from plugins.placement import gpu_task_args

with DAG(
    dag_id="continual_dpo_baseline",
    schedule=[PREFERENCES],
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={"config": config_param()},
    tags=["h3ops", "train", "baseline"],
    doc_md=__doc__,
) as dag:

    @task
    def plan(*, params=None) -> dict:
        found = {d["dimension"]: d for d in run_in_task("datasets", params)}
        if not found:
            raise AirflowSkipException("no ingested preference data")
        return found

    @task
    def base_model(*, params=None) -> str:
        return run_in_task("prepare_base", params)

    @task(**gpu_task_args())
    def continual(base: str, datasets: dict, *, params=None) -> list[str]:
        # Registered here, before the task ends: the stages' folders are on this worker's disk only.
        # Sequential on purpose: stage k's parent is stage k-1's registered version.
        stages = run_in_task("continual", params, base=base, datasets=datasets)
        uris, parent = [], base
        for s in stages:
            ref = run_in_task("register", params, path=s["path"], kind="continual",
                              dimension=s["dimension"], data_digest=s["data_digest"], parents=[parent], base=base,
                              method=f"continual-dpo-stage{s['stage']}")
            uris.append(ref["uri"])
            parent = ref["uri"]
        return uris

    @task(**gpu_task_args())
    def evaluate(model_uri: str, *, params=None) -> dict:
        return run_in_task("evaluate", params, model_uri=model_uri)

    @task(outlets=[CONTINUAL_BASELINE])
    def publish(datasets: dict, stages: list[str], evaluated: list[dict], *, outlet_events=None) -> dict:
        """Runs only when every stage is registered and evaluated (any failure upstream: no event)."""
        extra = {"stages": list(stages), "data": {d: v["digest"] for d, v in datasets.items()}}
        outlet_events[CONTINUAL_BASELINE].extra = extra
        return extra

    base = base_model()
    datasets = plan()
    stages = continual(base, datasets)
    publish(datasets, stages, evaluate.expand(model_uri=stages))
