"""merge_benchmark: every merge method of the benchmark plan on the current candidates, each with
the plan's settings (h3ops/merge_benchmark.yaml, versioned), registered and evaluated; a
leaderboard (like the paper's Table 3) and a 3H trade-off plot are logged to MLflow.
Weekly, and manual with `methods` (labels or method names) to benchmark a subset, `benchmark` to
use another plan file, `sweep` to add every swept density/λ value."""
from __future__ import annotations

from airflow.sdk import DAG, Param, task

from plugins.defaults import DEFAULT_ARGS, START, config_param
from plugins.operators import run_in_task
from plugins.placement import gpu_task_args
from plugins.pools import dpo_task_args, run_dpo_in_task

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
            "sweep": Param(False, type="boolean", description="also run every swept parameter value"),
            "mixtures": Param(True, type="boolean", description="train and rank the data-mixture baselines"),
            "scorer": Param(None, type=["null", "string"],
                            description="scorer of the reward/hummer mixtures: a reward model folder, or judge:<model> "
                                        "for the chat judge at H3OPS_JUDGE_BASE_URL (none: heuristic only)")},
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

    @task(**gpu_task_args())
    def merge_and_evaluate(entry: dict, base: str, cands: list[dict], *, params=None) -> dict:
        merged = run_in_task("benchmark_merge", params, entry=entry, base=base, candidates=list(cands))
        ref = run_in_task("register", params, path=merged["path"], kind="merged", parents=merged["parents"],
                          method=entry["method"], base=base, config_digest=None)
        run_in_task("evaluate", params, model_uri=ref["uri"])
        return {**ref, "method": entry["method"], "label": entry["label"]}

    @task
    def mixture_runs(*, params=None) -> list[dict]:
        if not params.get("mixtures"):
            return []
        return run_in_task("mixture_runs", params, benchmark=params.get("benchmark"), scorer=params.get("scorer"))

    @task
    def datasets(*, params=None) -> list[dict]:
        return run_in_task("datasets", params)

    # A DPO job: as many GPU pool slots as `dpo.devices` GPUs it trains on. It registers what it
    # trained before it ends (the folder is on that worker only): only the models:/ URI leaves it.
    @task(**dpo_task_args())
    def train_mixture(run: dict, base: str, data: list[dict], *, params=None) -> dict:
        trained = run_dpo_in_task("train_mixture", params, base=base, datasets=list(data), run=run,
                                  scorer=params.get("scorer"))
        ref = run_in_task("register", params, path=trained["path"], kind="mixture", dimension="mixture",
                          data_digest=trained["data_digest"], parents=[base], method=trained["method"], base=base)
        return {**ref, "method": trained["method"], "label": trained["label"]}

    @task(**gpu_task_args())
    def evaluate_mixture(trained: dict, *, params=None) -> dict:
        run_in_task("evaluate", params, model_uri=trained["uri"])
        return trained

    # Runs when the mixture branch was skipped (mixtures off: nothing to map), not after a failure.
    @task(trigger_rule="none_failed")
    def leaderboard(results: list[dict], mixed: list[dict] | None, *, params=None) -> dict:
        return run_in_task("leaderboard", params, merged=list(results), mixtures=list(mixed or []))

    base = base_model()
    merged = merge_and_evaluate.partial(base=base, cands=candidates()).expand(entry=methods())
    trained = train_mixture.partial(base=base, data=datasets()).expand(run=mixture_runs())
    leaderboard(merged, evaluate_mixture.expand(trained=trained))
