"""Log an EvalResult as an MLflow evaluation run (metrics, params, lineage tags, result artifacts)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path


def log_result(result, *, tracking_uri: str, experiment: str = "h3ops-eval", model_version: str | None = None,
               artifact_location: str | None = None) -> str:
    """Create a run holding the result; returns its id. `model_version` (models:/name/version) is
    recorded as a tag so the registry can link versions to their evaluations."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_location)
    payload = result.mlflow_payload()
    tags = {**payload["tags"], "h3ops.eval.model": result.model}
    if model_version:
        tags["h3ops.eval.model_version"] = model_version
    run = client.create_run(exp_id, tags=tags, run_name=f"eval-{result.suite}")
    rid = run.info.run_id
    try:
        from mlflow.entities import Metric, Param

        import time
        now = int(time.time() * 1000)
        client.log_batch(rid, metrics=[Metric(k, float(v), now, 0) for k, v in payload["metrics"].items()],
                         params=[Param(k, str(v)) for k, v in payload["params"].items()])
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "result.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
            client.log_artifact(rid, str(Path(tmp) / "result.json"))
        client.log_artifacts(rid, str(result.details_dir), artifact_path="details")
        client.set_terminated(rid, "FINISHED")
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    return rid
