"""Gate, promote, roll back, hand off: the decision is a pure function (evaluation.gate); the
registry applies it (alias `production` moves only on pass, `previous-production` keeps the old)."""
from __future__ import annotations

from typing import Any

from h3ops.config import PipelineConfig
from h3ops.steps import step
from h3ops.steps.common import local_model, registry
from h3ops.steps.evaluate import _plain
from h3ops.steps.register import register


def policy(cfg: PipelineConfig):
    """The config's gate section is already an evaluation.gate.GatePolicy (validated at load)."""
    return cfg.gate


@step("production")
def production_uri(cfg: PipelineConfig) -> str | None:
    ref = registry(cfg).production(cfg.project)
    return ref.uri if ref else None


@step("continual_latest")
def continual_latest(cfg: PipelineConfig) -> list[str]:
    """URIs of the newest registered continual-DPO sequence, stage 1 first (for reports; the gate
    compares with the sequence trained on the candidate's own data, see compared_models)."""
    from registry.references import continual_sequence
    return [r.uri for r in continual_sequence(registry(cfg), cfg.project)]


@step("compared_models")
def compared_models(cfg: PipelineConfig, candidate_uri: str) -> list[str]:
    """What the gate compares `candidate_uri` with: production, then the continual stages trained
    on the candidate's data (registry.references, the one place that choice is made)."""
    from registry.references import references
    reg = registry(cfg)
    prod, stages, _ = references(reg, cfg.project, reg.resolve(candidate_uri))
    return [r.uri for r in ([prod] if prod else []) + stages]


@step("gate")
def gate(cfg: PipelineConfig, candidate_uri: str) -> dict:
    """→ the decision record (passed, rules with numbers, versions compared, suite digest).

    Every version's scores are looked up under the suite digest this config measures with, bound to
    the version's content digest."""
    from h3ops.steps.evaluate import expected_suite_digest
    from registry.references import gate_inputs
    inputs = gate_inputs(registry(cfg), cfg.project, candidate_uri, suite_digest=expected_suite_digest(cfg))
    decision = inputs.decide(policy(cfg))
    out = _plain(decision.to_dict())
    out["summary"] = decision.summary()
    return out


@step("promote")
def promote(cfg: PipelineConfig, candidate_uri: str, decision: dict) -> dict:
    """Apply a decision: the registry recomputes it from its logged scores and this config's policy
    and refuses a record that disagrees; on pass production → candidate, on fail nothing moves."""
    return _outcome(registry(cfg).promote(cfg.project, candidate_uri, decision, policy=policy(cfg)))


@step("promote_manual")
def promote_manual(cfg: PipelineConfig, model_uri: str, reason: str = "manual promotion") -> dict:
    """An ops decision: move production to `model_uri` without the gate (a forced promotion, its
    reason recorded in the audit trail)."""
    return _outcome(registry(cfg).promote(cfg.project, model_uri, None, force=True, reason=reason))


def _outcome(result) -> dict:
    return {"promoted": bool(result.promoted), "production": result.production,
            "previous": result.previous, "message": result.message}


@step("bootstrap_production")
def bootstrap_production(cfg: PipelineConfig, base: str) -> dict:
    """First run only: make the base model the first production model, so the gate has something
    to beat. Production lives on `<project>-merged`, so the base is registered there (method
    `base`: the zero-task-vector merge) and promoted manually. No-op once production exists."""
    current = production_uri(cfg)
    if current:
        return {"promoted": False, "production": current, "message": "production exists"}
    ref = register(cfg, str(local_model(cfg, base)), "merged", method="base", parents=[base], base=base)
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
