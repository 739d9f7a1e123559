"""Asset definitions and placement names shared by the DAGs.

`preferences` gets ONE event per preference_ingest run in which new data landed (its last task,
after every dimension's validation; extra: each landed dimension's dataset URI, digest and rows):
the continual-DPO baseline DAG is scheduled on it alone, so one ingest run starts one baseline run
on all of its data. The per-dimension assets (events through the alias, from each mapped
`validate`) are lineage for the UI only: nothing is scheduled on them, because a run's mapped
validations finish at different times and their events can reach the scheduler in separate loops
(one run per loop: a baseline on part of the data, then a second continual sequence).
`continual_baseline` gets an event when the continual-DPO baseline DAG has registered and evaluated
every stage for the current data; the continual-alignment DAG is scheduled on it, so its gate never
runs before the continual references for the same data exist. `production_model` gets an event
whenever the production alias moves.
"""
from __future__ import annotations

from airflow.sdk import Asset, AssetAlias

from h3ops.names import ALL_DIMENSIONS

PREFERENCES_ALIAS = AssetAlias(name="h3ops-preferences")
PRODUCTION_ALIAS = AssetAlias(name="h3ops-production")


def preference_asset(dimension: str) -> Asset:
    return Asset(name=f"h3ops.preferences.{dimension}", uri=f"h3ops://preferences/{dimension}",
                 group="preferences")


PREFERENCE_ASSETS = {d: preference_asset(d) for d in ALL_DIMENSIONS}
PREFERENCES = Asset(name="h3ops.preferences", uri="h3ops://preferences", group="preferences")
CONTINUAL_BASELINE = Asset(name="h3ops.continual_baseline", uri="h3ops://models/continual-baseline", group="model")
PRODUCTION_MODEL = Asset(name="h3ops.production", uri="h3ops://models/production", group="model")
