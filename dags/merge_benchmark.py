"""merge_benchmark: every merge method of the benchmark plan on the current candidates, each with
the plan's settings (h3ops/merge_benchmark.yaml, versioned), registered and evaluated; a
leaderboard (like the paper's Table 3) and a 3H trade-off plot are logged to MLflow.
Weekly, and manual with `methods` (labels or method names) to benchmark a subset, `benchmark` to
use another plan file, `sweep` to add every swept density/λ value."""
from __future__ import annotations

from airflow.sdk import DAG, Param, task

from plugins.assets import GPU_POOL, GPU_QUEUE
from plugins.defaults import DEFAULT_ARGS, START, config_param
from plugins.operators import run_in_task

with DAG(
    dag_id="merge_benchmark",
    schedule="@weekly",
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={"config": config_param(),
            "methods": Param(None, type=["null", "array"], description="entries to run (default: all)"),
            "benchmark": Param(None, type=["null", "string"], description="benchmark plan YAML (default: packaged)"),
            "sweep": Param(False, type="boolean", description="also run every swept parameter value")},
    tags=["h3ops", "merge", "benchmark"],
    doc_md=__doc__,
) as dag:

    @task
    def methods(*, params=None) -> list[dict]:
        return run_in_task("merge_methods", params, methods=params.get("methods"),
                           benchmark=params.get("benchmark"), sweep=bool(params.get("sweep")))

    @task
    def candidates(*, params=None) -> list[dict]:
        return run_in_task("benchmark_candidates", params)

    @task
    def base_model(*, params=None) -> str:
        return run_in_task("prepare_base", params)

    @task(pool=GPU_POOL, queue=GPU_QUEUE)
    def merge_and_evaluate(entry: dict, base: str, cands: list[dict], *, params=None) -> dict:
        merged = run_in_task("benchmark_merge", params, entry=entry, base=base, candidates=list(cands))
        ref = run_in_task("register", params, path=merged["path"], kind="merged", parents=merged["parents"],
                          method=entry["method"], base=base, config_digest=None)
        run_in_task("evaluate", params, model_uri=ref["uri"])
        return {**ref, "method": entry["method"], "label": entry["label"]}

    @task
    def leaderboard(results: list[dict], *, params=None) -> dict:
        return run_in_task("leaderboard", params, merged=list(results))

    leaderboard(merge_and_evaluate.partial(base=base_model(), cands=candidates()).expand(entry=methods()))
