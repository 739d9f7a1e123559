"""3H evaluation of a registered model; scores are logged to MLflow on the model version.

A model whose scores for this suite are already in the registry is not evaluated again, so the
gate can ask for production's and the continual checkpoints' scores at no cost after the first run.
"""
from __future__ import annotations

from typing import Any

from h3ops.config import PipelineConfig
from h3ops.steps import step
from h3ops.steps.common import local_model, registry, workdir


def _plain(obj: Any) -> Any:
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "to_dict"):
        return _plain(obj.to_dict())
    if hasattr(obj, "model_dump"):
        return _plain(obj.model_dump())
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _plain(getattr(obj, k)) for k in obj.__dataclass_fields__}
    return str(obj)


def expected_suite_digest(cfg: PipelineConfig) -> str:
    """The suite digest this config's evaluation settings (suite, limit, judge, data) measure under."""
    from evaluation.runner import scores_digest

    ev = cfg.evaluation
    return scores_digest(ev.suite, ev.limit, ev.judge)


def existing_scores(cfg: PipelineConfig, model_uri: str) -> dict | None:
    """Scores already logged for this model's content under this config's suite digest, or None.
    Keyed by (content digest, suite digest), not the suite's name: a changed limit re-evaluates."""
    got = registry(cfg).get_scores(model_uri, expected_suite_digest(cfg))
    if got is None:
        return None
    return {"metrics": dict(got.metrics), "scores": got.to_dict(), "suite_digest": got.suite_digest}


@step("evaluate")
def evaluate(cfg: PipelineConfig, model_uri: str, *, force: bool = False) -> dict:
    """→ {model_uri, metrics, scores, suite_digest, cached}."""
    if not force and (got := existing_scores(cfg, model_uri)):
        return {"model_uri": model_uri, **got, "cached": True}
    from evaluation import run_suite

    ev = cfg.evaluation
    safe = model_uri.replace(":/", "").replace("/", "_")
    result = run_suite(str(local_model(cfg, model_uri)), ev.suite, limit=ev.limit, judge=ev.judge,
                       cache_dir=ev.cache_dir or str(workdir(cfg, "eval-cache")),
                       out_dir=str(workdir(cfg, "eval", safe)))
    # The registry binds scores to (the evaluated folder's content digest, the scores' suite digest).
    registry(cfg).log_evaluation(model_uri, dict(result.metrics), result.scores, result.scores.suite_digest,
                                 details_dir=result.details_dir, model_digest=result.model_digest)
    return {"model_uri": model_uri, "metrics": _plain(result.metrics), "scores": result.scores.to_dict(),
            "suite_digest": result.scores.suite_digest, "cached": False}
