"""Gate, promote, roll back: the decision is a pure function (evaluation.gate); this applies it."""
from __future__ import annotations

from typing import Any

from h3ops.config import PipelineConfig
from h3ops.steps import step
from h3ops.steps.common import registry
from h3ops.steps.evaluate import _plain
from h3ops.steps.register import ref_dict


def policy(cfg: PipelineConfig):
    from evaluation.gate import GatePolicy
    g = cfg.gate
    return GatePolicy(margin=g.margin, max_regression=g.max_regression, rule=g.rule)


def production_uri(cfg: PipelineConfig) -> str | None:
    ref = registry(cfg).production(cfg.project)
    return ref_dict(ref)["uri"] if ref else None


def _scores_of(cfg: PipelineConfig, uri: str) -> Any:
    got = registry(cfg).get_scores(uri)
    if not got:
        raise LookupError(f"gate: no evaluation scores for {uri}; run the evaluate step first")
    return got


@step("gate")
def gate(cfg: PipelineConfig, candidate_uri: str, *, continual_uris: list[str] | None = None) -> dict:
    """→ the decision record (passed, rules with numbers, versions compared, suite digest)."""
    from evaluation.gate import decide
    prod = production_uri(cfg)
    cont = list(continual_uris or [])
    decision = decide(_scores_of(cfg, candidate_uri), _scores_of(cfg, prod) if prod else None,
                      [_scores_of(cfg, u) for u in cont], policy(cfg))
    out = _plain(decision)
    out.update(candidate=candidate_uri, production=prod, continual=cont)
    return out


@step("promote")
def promote(cfg: PipelineConfig, candidate_uri: str, decision: dict) -> dict:
    """Move alias `production` on a passed decision; a failed one moves nothing."""
    if not decision.get("passed"):
        return {"promoted": False, "production": production_uri(cfg), "reason": "gate failed"}
    result = registry(cfg).promote(cfg.project, candidate_uri, decision)
    return {"promoted": True, "production": candidate_uri, "result": _plain(result)}


@step("rollback")
def rollback(cfg: PipelineConfig) -> dict:
    result = registry(cfg).rollback(cfg.project)
    return {"rolled_back": True, "production": production_uri(cfg), "result": _plain(result)}
