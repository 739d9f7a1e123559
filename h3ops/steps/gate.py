"""Gate, promote, roll back, hand off: the decision is a pure function (evaluation.gate); the
registry applies it (alias `production` moves only on pass, `previous-production` keeps the old)."""
from __future__ import annotations

from typing import Any

from h3ops.config import PipelineConfig
from h3ops.steps import step
from h3ops.steps.common import registry
from h3ops.steps.evaluate import _plain
from h3ops.steps.register import ref_dict, register


def policy(cfg: PipelineConfig):
    from evaluation.gate import GatePolicy
    g = cfg.gate
    return GatePolicy(margin=g.margin, max_regression=g.max_regression, rule=g.rule)


@step("production")
def production_uri(cfg: PipelineConfig) -> str | None:
    ref = registry(cfg).production(cfg.project)
    return ref.uri if ref else None


def _scores_of(reg, uri: str):
    got = reg.get_scores(uri)
    if got is None:
        raise LookupError(f"gate: no evaluation scores for {uri}; run the evaluate step first")
    return got


@step("continual_latest")
def continual_latest(cfg: PipelineConfig) -> list[str]:
    """URIs of the newest registered continual checkpoint for each stage of continual.order."""
    latest: dict[str, Any] = {}
    for v in registry(cfg).versions(cfg.project, "continual"):  # ascending versions
        dim = v.tags.get("h3ops.dimension")
        if dim:
            latest[dim] = v
    return [latest[d].uri for d in cfg.continual_order if d in latest]


@step("compared_models")
def compared_models(cfg: PipelineConfig) -> list[str]:
    """What the gate compares a candidate against: production, then the continual checkpoints."""
    prod = production_uri(cfg)
    return ([prod] if prod else []) + continual_latest(cfg)


@step("gate")
def gate(cfg: PipelineConfig, candidate_uri: str, *, continual_uris: list[str] | None = None) -> dict:
    """→ the decision record (passed, rules with numbers, versions compared, suite digest)."""
    from evaluation.gate import decide
    reg = registry(cfg)
    prod = production_uri(cfg)
    cont = list(continual_latest(cfg) if continual_uris is None else continual_uris)
    decision = decide(_scores_of(reg, candidate_uri), _scores_of(reg, prod) if prod else None,
                      [_scores_of(reg, u) for u in cont], policy(cfg),
                      versions={"candidate": candidate_uri, "production": prod, "continual": cont})
    out = _plain(decision.to_dict())
    out["summary"] = decision.summary()
    return out


@step("promote")
def promote(cfg: PipelineConfig, candidate_uri: str, decision: dict) -> dict:
    """Apply a decision: on pass production → candidate; on fail nothing moves (decision logged)."""
    result = registry(cfg).promote(cfg.project, candidate_uri, decision)
    return {"promoted": bool(result.promoted), "production": result.production,
            "previous": result.previous, "message": result.message}


@step("promote_manual")
def promote_manual(cfg: PipelineConfig, model_uri: str, reason: str = "manual promotion") -> dict:
    """An ops decision: move production to `model_uri` without the gate, recorded as manual."""
    decision = {"passed": True, "manual": True, "reason": reason, "candidate": model_uri,
                "production": production_uri(cfg), "rules": [], "notes": ["manual promotion, no gate"]}
    return promote(cfg, model_uri, decision)


@step("bootstrap_production")
def bootstrap_production(cfg: PipelineConfig, base: str) -> dict:
    """First run only: make the base model the first production model, so the gate has something
    to beat. Production lives on `<project>-merged`, so the base is registered there (method
    `base`: the zero-task-vector merge) and promoted manually. No-op once production exists."""
    current = production_uri(cfg)
    if current:
        return {"promoted": False, "production": current, "message": "production exists"}
    ref = register(cfg, base, "merged", method="base", parents=[base], base=base)
    return promote_manual(cfg, ref["uri"], reason="bootstrap: the base model is the first production model")


@step("rollback")
def rollback(cfg: PipelineConfig) -> dict:
    result = registry(cfg).rollback(cfg.project)
    return {"rolled_back": True, "production": result.production, "previous": result.previous,
            "message": result.message}


@step("serving_manifest")
def serving_manifest(cfg: PipelineConfig, *, s3_client: Any = None) -> dict:
    """Write where serving finds production (model URI, digest, version, scores, time)."""
    dest = cfg.registry.serving_manifest
    if not dest:
        return {"manifest": None, "production": production_uri(cfg)}
    if "://" not in dest:
        from h3ops.steps.common import abspath
        dest = str(abspath(dest))
    doc = registry(cfg).write_serving_manifest(cfg.project, dest, s3_client=s3_client)
    return {"manifest": dest, **_plain(doc)}
