"""continual_alignment: new preference data → DPO per dimension → merge → evaluate → gate → promote.

Scheduled on the `h3ops.continual_baseline` asset, which continual_dpo_baseline emits once it has
registered and evaluated the continual-DPO stages for the current preference data: the gate must
beat them, so it never runs before they exist. The gate compares with the continual sequence
trained on the candidate's own data (registry/references.py) and fails with none
(GatePolicy.require_continual), so data arriving between the two runs cannot pass either. Every DPO task is mapped over the dimensions with data and
runs in pool `gpu` (queue `gpu` on Celery); every task is idempotent, so clearing and rerunning any
of them finds its own output or registered version instead of making a duplicate. The merge method
and its parameters can be overridden per run through params.
"""
from __future__ import annotations

from airflow.sdk import DAG, Param, task
from airflow.sdk.exceptions import AirflowSkipException

from plugins.assets import CONTINUAL_BASELINE, PRODUCTION_ALIAS, PRODUCTION_MODEL
from plugins.defaults import DEFAULT_ARGS, START, config_param
from plugins.operators import run_in_task
from plugins.placement import gpu_task_args

with DAG(
    dag_id="continual_alignment",
    schedule=[CONTINUAL_BASELINE],
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={
        "config": config_param(),
        "method": Param(None, type=["null", "string"], description="merge method (default: config)"),
        "parameters": Param(None, type=["null", "object"], description="merge parameters override"),
        "dimensions": Param(None, type=["null", "array"], description="restrict to these dimensions"),
    },
    tags=["h3ops", "train", "merge", "gate"],
    doc_md=__doc__,
) as dag:

    @task
    def plan(*, params=None) -> list[dict]:
        found = run_in_task("datasets", params, dimensions=params.get("dimensions"))
        if not found:
            raise AirflowSkipException("no ingested preference data for any dimension")
        return found

    @task
    def base_model(*, params=None) -> str:
        return run_in_task("prepare_base", params)

    # A GPU task registers what it made before it ends: its output folder is on that worker's (or
    # pod's) disk only, so what leaves the task is the registered models:/ URI, never the path.
    @task(**gpu_task_args(), max_active_tis_per_dag=4)
    def train(dataset: dict, base: str, *, params=None) -> dict:
        trained = run_in_task("train", params, base=base, dataset=dataset, dimension=dataset["dimension"])
        ref = run_in_task("register", params, path=trained["path"], kind="candidate",
                          dimension=trained["dimension"], data_digest=trained["data_digest"],
                          parents=[base], base=base)
        return {**ref, "dimension": trained["dimension"]}

    @task(**gpu_task_args())
    def merge(base: str, candidates: list[dict], *, params=None) -> dict:
        merged = run_in_task("merge", params, base=base, candidates=[c["uri"] for c in list(candidates)],
                             method=params.get("method"), parameters=params.get("parameters"))
        return run_in_task("register", params, path=merged["path"], kind="merged",
                           parents=merged["parents"], method=merged["method"], base=base)

    @task
    def models_to_evaluate(merged: dict, *, params=None) -> list[str]:
        others = run_in_task("compared_models", params, candidate_uri=merged["uri"])
        return [merged["uri"], *[u for u in others if u != merged["uri"]]]

    @task(**gpu_task_args())
    def evaluate(model_uri: str, *, params=None) -> dict:
        return run_in_task("evaluate", params, model_uri=model_uri)

    @task
    def gate(merged: dict, evaluated: list[dict], *, params=None) -> dict:
        return run_in_task("gate", params, candidate_uri=merged["uri"])

    @task(outlets=[PRODUCTION_ALIAS])
    def promote(merged: dict, decision: dict, *, params=None, outlet_events=None) -> dict:
        result = run_in_task("promote", params, candidate_uri=merged["uri"], decision=decision)
        if result["promoted"]:  # the serving hand-off runs only when the alias really moved
            outlet_events[PRODUCTION_ALIAS].add(PRODUCTION_MODEL, extra={"model_uri": result["production"]})
        return result

    datasets = plan()
    base = base_model()
    trained = train.partial(base=base).expand(dataset=datasets)
    merged = merge(base, trained)
    evaluated = evaluate.expand(model_uri=models_to_evaluate(merged))
    promote(merged, gate(merged, evaluated))
