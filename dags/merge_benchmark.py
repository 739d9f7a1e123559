"""merge_benchmark: every merge method on the current candidates, each registered and evaluated;
a leaderboard (like the paper's Table 3) and a 3H trade-off plot are logged to MLflow.
Weekly, and manual with a `methods` param to benchmark a subset."""
from __future__ import annotations

from airflow.sdk import DAG, Param, task

from plugins.defaults import DEFAULT_ARGS, START, config_param
from plugins.operators import run_in_task
from plugins.placement import gpu_task_args

with DAG(
    dag_id="merge_benchmark",
    schedule="@weekly",
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={"config": config_param(),
            "methods": Param(None, type=["null", "array"], description="methods to run (default: all)")},
    tags=["h3ops", "merge", "benchmark"],
    doc_md=__doc__,
) as dag:

    @task
    def methods(*, params=None) -> list[str]:
        return run_in_task("merge_methods", params, methods=params.get("methods"))

    @task
    def candidates(*, params=None) -> list[str]:
        return run_in_task("latest_candidates", params)

    @task
    def base_model(*, params=None) -> str:
        return run_in_task("prepare_base", params)

    @task(**gpu_task_args())
    def merge_and_evaluate(method: str, base: str, cands: list[str], *, params=None) -> dict:
        merged = run_in_task("merge", params, base=base, candidates=list(cands), method=method, parameters={})
        ref = run_in_task("register", params, path=merged["path"], kind="merged", parents=merged["parents"],
                          method=method, base=base, config_digest=None)
        run_in_task("evaluate", params, model_uri=ref["uri"])
        return {**ref, "method": method}

    @task
    def leaderboard(results: list[dict], *, params=None) -> dict:
        return run_in_task("leaderboard", params, merged=list(results))

    leaderboard(merge_and_evaluate.partial(base=base_model(), cands=candidates()).expand(method=methods()))
