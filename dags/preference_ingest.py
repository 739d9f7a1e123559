"""preference_ingest: landed preference files → validated datasets → one asset event per dimension.

sensor (new or changed files in a landing folder or s3:// prefix) → validate and build each
dimension's dataset (bad files quarantined with their report, links and hostile S3 keys refused)
→ an event on `h3ops.preferences.<dimension>` carrying the dataset's URI and digest. No event,
nothing downstream: a malformed file never starts training. Each file is handled on its own, so a
poison file never fails the task; the step's ledger keeps every file's outcome by content digest,
so a quarantined file is not retried until it changes.
"""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, task

from plugins.assets import PREFERENCE_ASSETS, PREFERENCES_ALIAS
from plugins.defaults import DEFAULT_ARGS, START, config_param
from plugins.operators import run_in_task
from plugins.sensors import LandingSensor

with DAG(
    dag_id="preference_ingest",
    schedule=timedelta(minutes=15),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={"config": config_param()},
    tags=["h3ops", "data"],
    doc_md=__doc__,
) as dag:
    wait = LandingSensor(task_id="wait_for_files", poke_interval=60, timeout=10 * 60,
                         soft_fail=True, deferrable=False)

    @task
    def dimensions_with_files(found: dict[str, list[str]]) -> list[str]:
        return sorted(found)

    @task(outlets=[PREFERENCES_ALIAS])
    def validate(dimension: str, *, params=None, outlet_events=None) -> dict:
        result = run_in_task("ingest", params, dimension=dimension)
        if result["new"]:
            extra = {k: result.get(k) for k in ("dimension", "uri", "digest", "rows")}
            outlet_events[PREFERENCES_ALIAS].add(PREFERENCE_ASSETS[dimension], extra=extra)
        return result

    validate.expand(dimension=dimensions_with_files(wait.output))
