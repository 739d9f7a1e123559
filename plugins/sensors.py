"""Sensors: wait for preference files to land (a local folder or an s3:// prefix).

Poke mode checks once per interval from a worker slot; deferrable mode hands the wait to the
triggerer (`LandingTrigger`), so a quiet landing location holds no worker.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.triggers.base import BaseTrigger, TriggerEvent


def find_new_files(config: str | None, dimensions: Sequence[str] | None = None) -> dict[str, list[str]]:
    """{dimension: landed files not yet ingested}, only dimensions that have some."""
    from h3ops.steps.ingest import new_files
    from plugins.hooks import LandingHook
    from plugins.operators import pipeline_config

    cfg = pipeline_config({"config": config})
    client = LandingHook().get_conn() if any(d.is_s3 for d in cfg.dimensions) else None
    names = dimensions or [d.name for d in cfg.dimensions]
    found = {d: new_files(cfg, d, s3_client=client) for d in names}
    return {d: f for d, f in found.items() if f}


class LandingTrigger(BaseTrigger):
    """Fires once new files are present in any configured landing location."""

    def __init__(self, config: str | None, dimensions: list[str] | None = None,
                 poke_interval: float = 30.0) -> None:
        super().__init__()
        self.config, self.dimensions, self.poke_interval = config, dimensions, poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("plugins.sensors.LandingTrigger",
                {"config": self.config, "dimensions": self.dimensions, "poke_interval": self.poke_interval})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            # Listing is blocking I/O (boto3, filesystem): keep it off the triggerer's event loop.
            found = await asyncio.to_thread(find_new_files, self.config, self.dimensions)
            if found:
                yield TriggerEvent({"files": found})
                return
            await asyncio.sleep(self.poke_interval)


class LandingSensor(BaseSensorOperator):
    """Done when any dimension has new landed files; XCom: {dimension: [files]}."""

    template_fields: Sequence[str] = ("config",)

    def __init__(self, *, config: str | None = None, dimensions: list[str] | None = None,
                 deferrable: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config, self.dimensions, self.deferrable = config, dimensions, deferrable

    def _config(self, context) -> str:
        # Resolved here, in the task, so a deferred trigger carries the location itself.
        from plugins.operators import config_location
        return self.config or config_location(context.get("params"))

    def poke(self, context) -> PokeReturnValue:
        found = find_new_files(self._config(context), self.dimensions)
        return PokeReturnValue(is_done=bool(found), xcom_value=found)

    def execute(self, context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        found = find_new_files(self._config(context), self.dimensions)
        if found:
            return found
        self.defer(trigger=LandingTrigger(self._config(context), self.dimensions, self.poke_interval),
                   method_name="execute_complete")

    def execute_complete(self, context, event: dict[str, Any]) -> dict[str, list[str]]:
        return event["files"]
