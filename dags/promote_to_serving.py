"""promote_to_serving: the ops hand-off. Manual (promote a given version, or roll back) and
triggered whenever the `production` alias moves; writes the serving manifest, then tells the running
`h3ops serve` (connection `h3ops_serving`) and waits for its switch: a version serving refuses
(digest mismatch, fails to load) fails `notify_serving` with serving's reason.
"""
from __future__ import annotations

from airflow.sdk import DAG, Param, task

from plugins.assets import PRODUCTION_MODEL
from plugins.defaults import DEFAULT_ARGS, START, config_param
from plugins.operators import run_in_task

with DAG(
    dag_id="promote_to_serving",
    schedule=[PRODUCTION_MODEL],
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "retries": 0},  # a promotion is never retried blindly
    params={
        "config": config_param(),
        "action": Param("handoff", enum=["handoff", "promote", "rollback"],
                        description="handoff: publish the current production; promote: a given version"),
        "model_uri": Param(None, type=["null", "string"], description="models:/name/version to promote"),
        "reason": Param("manual promotion", type="string"),
    },
    tags=["h3ops", "ops", "serving"],
    doc_md=__doc__,
) as dag:

    @task
    def apply(*, params=None) -> dict:
        action = params["action"]
        if action == "rollback":
            return run_in_task("rollback", params)
        if action == "promote":
            if not params.get("model_uri"):
                raise ValueError("action=promote needs params.model_uri (models:/name/version)")
            return run_in_task("promote_manual", params, model_uri=params["model_uri"],
                               reason=params["reason"])
        return {"production": run_in_task("production", params)}

    @task
    def handoff(applied: dict, *, params=None) -> dict:
        return run_in_task("serving_manifest", params)

    @task
    def notify_serving(handed: dict, *, params=None) -> dict:
        from plugins.hooks import ServingHook

        url, token = ServingHook().endpoint()
        return run_in_task("serving_reload", params, url=url, token=token)

    notify_serving(handoff(apply()))
