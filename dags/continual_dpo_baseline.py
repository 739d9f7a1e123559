"""continual_dpo_baseline: the sequential continual-DPO baseline the gate must beat.

Stage k trains from stage k-1 on the next dimension's data (order from the config, the paper's by
default); each stage is registered as `<project>-continual` with lineage and evaluated, so the
gate always has current continual checkpoints to compare with.
"""
from __future__ import annotations

from airflow.sdk.exceptions import AirflowSkipException
from airflow.sdk import DAG, AssetAll, task

from plugins.assets import GPU_POOL, GPU_QUEUE, PREFERENCE_ASSETS
from plugins.defaults import DEFAULT_ARGS, START, config_param
from plugins.operators import run_in_task

with DAG(
    dag_id="continual_dpo_baseline",
    # Needs every dimension's data: runs once all of them have (new) events.
    schedule=AssetAll(*(PREFERENCE_ASSETS[d] for d in ("helpfulness", "honesty", "harmlessness"))),
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

    @task(pool=GPU_POOL, queue=GPU_QUEUE)
    def continual(base: str, datasets: dict, *, params=None) -> list[dict]:
        return run_in_task("continual", params, base=base, datasets=datasets)

    @task
    def register_stages(base: str, stages: list[dict], *, params=None) -> list[str]:
        # Sequential on purpose: stage k's parent is stage k-1's registered version.
        uris, parent = [], base
        for s in stages:
            ref = run_in_task("register", params, path=s["path"], kind="continual",
                              dimension=s["dimension"], data_digest=s["data_digest"], parents=[parent], base=base,
                              method=f"continual-dpo-stage{s['stage']}")
            uris.append(ref["uri"])
            parent = ref["uri"]
        return uris

    @task(pool=GPU_POOL, queue=GPU_QUEUE)
    def evaluate(model_uri: str, *, params=None) -> dict:
        return run_in_task("evaluate", params, model_uri=model_uri)

    base = base_model()
    evaluate.expand(model_uri=register_stages(base, continual(base, plan())))
