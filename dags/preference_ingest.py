"""preference_ingest: landed preference files → validated datasets → ONE asset event per run.

sensor (new or changed files in a landing folder or s3:// prefix) → validate and build each
dimension's dataset, mapped over the dimensions with files (bad files quarantined with their
report, links and hostile S3 keys refused; each mapped instance emits a lineage event on
`h3ops.preferences.<dimension>`) → `announce`: one event on `h3ops.preferences` listing every
dimension that landed new data, with its dataset URI and digest. continual_dpo_baseline is
scheduled on that single event, never on the per-dimension ones: the mapped validations finish
at different times (on different workers), and events arriving in separate scheduler loops would
start one baseline run each, the first on part of the data (plugins/assets.py).

Nothing new, no event, nothing downstream: a malformed file never starts training. Each file is
handled on its own, so a poison file never fails the task; the step's ledger keeps every file's
outcome by content digest, so a quarantined file is not retried until it changes. A dimension
whose validation fails (after its retry) does not hold back the others: `announce` runs once every
validation is done and at least one succeeded; the failed dimension's files stay new for the next
run, and the leaf `all_validated` (upstream failed) marks the run failed, so the failure shows.
"""
from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, task
from airflow.sdk.exceptions import AirflowSkipException
from airflow.task.trigger_rule import TriggerRule

from plugins.assets import PREFERENCE_ASSETS, PREFERENCES, PREFERENCES_ALIAS
from plugins.defaults import DEFAULT_ARGS, START, config_param
from plugins.operators import run_in_task
from plugins.sensors import LandingSensor

LANDED_FIELDS = ("uri", "digest", "rows")

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
        if result["new"]:  # lineage only: nothing is scheduled on a dimension's asset
            extra = {"dimension": dimension, **{k: result.get(k) for k in LANDED_FIELDS}}
            outlet_events[PREFERENCES_ALIAS].add(PREFERENCE_ASSETS[dimension], extra=extra)
        return result

    @task(outlets=[PREFERENCES], trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS)
    def announce(results: list[dict], *, outlet_events=None) -> dict:
        """The run's one scheduling event; skipped (no event) when nothing new landed."""
        # Failed validations left no result: only what succeeded is in `results`.
        landed = {r["dimension"]: {k: r.get(k) for k in LANDED_FIELDS} for r in results if r["new"]}
        if not landed:
            raise AirflowSkipException("no new preference data in this run")
        outlet_events[PREFERENCES].extra = {"dimensions": landed}
        return landed

    validated = validate.expand(dimension=dimensions_with_files(wait.output))
    announce(validated)
    # A run's state follows its leaves: without this one, a failed validation behind a successful
    # `announce` would leave the run green. Empty: the scheduler marks it done, no worker slot.
    validated >> EmptyOperator(task_id="all_validated")
