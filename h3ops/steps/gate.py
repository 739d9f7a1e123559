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


def _field(v: Any, key: str) -> Any:
    if isinstance(v, dict):
        return v.get(key, (v.get("tags") or {}).get(f"h3ops.{key}"))
    got = getattr(v, key, None)
    return got if got is not None else (getattr(v, "tags", None) or {}).get(f"h3ops.{key}")


@step("continual_latest")
def continual_latest(cfg: PipelineConfig) -> list[str]:
    """URIs of the newest registered continual checkpoint for each stage of continual.order."""
    latest: dict[str, tuple[int, str]] = {}
    for v in registry(cfg).versions(cfg.project, "continual"):
        dim, version, uri = _field(v, "dimension"), int(_field(v, "version")), _field(v, "uri")
        if dim and (dim not in latest or version > latest[dim][0]):
            latest[dim] = (version, uri)
    return [latest[d][1] for d in cfg.continual_order if d in latest]


@step("compared_models")
def compared_models(cfg: PipelineConfig) -> list[str]:
    """What the gate compares a candidate against: production, then the continual checkpoints."""
    prod = production_uri(cfg)
    return ([prod] if prod else []) + continual_latest(cfg)


@step("production")
def production(cfg: PipelineConfig) -> str | None:
    return production_uri(cfg)


@step("promote_manual")
def promote_manual(cfg: PipelineConfig, model_uri: str, reason: str = "manual promotion") -> dict:
    """An ops decision: move production to `model_uri` without the gate, recorded as manual."""
    import getpass
    decision = {"passed": True, "manual": True, "reason": reason, "by": getpass.getuser(),
                "candidate": model_uri}
    return promote(cfg, model_uri, decision)


@step("serving_manifest")
def serving_manifest(cfg: PipelineConfig) -> dict:
    """Write where serving finds production: {model_uri, version, scores, time} (local or s3://)."""
    import json
    from datetime import datetime, timezone
    from pathlib import Path

    reg = registry(cfg)
    ref = reg.production(cfg.project)
    if ref is None:
        raise LookupError(f"{cfg.project}: no production model to hand off")
    ref = ref_dict(ref)
    manifest = {"project": cfg.project, **ref, "scores": _plain(reg.get_scores(ref["uri"])),
                "written_at": datetime.now(timezone.utc).isoformat()}
    dest = cfg.registry.serving_manifest
    if dest and dest.startswith("s3://"):
        from h3ops.steps.storage import split_s3
        import boto3
        bucket, key = split_s3(dest)
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest, default=str).encode())
    elif dest:
        from h3ops.steps.common import write_json
        write_json(Path(dest).resolve(), manifest)
    return {"manifest": dest, **manifest}
