"""Asset definitions and placement names shared by the DAGs.

One asset per preference dimension: the ingest DAG emits an event on it (through the alias, with
the dataset's URI and digest as extra) and the continual-DPO baseline DAG is scheduled on them.
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
CONTINUAL_BASELINE = Asset(name="h3ops.continual_baseline", uri="h3ops://models/continual-baseline", group="model")
PRODUCTION_MODEL = Asset(name="h3ops.production", uri="h3ops://models/production", group="model")
