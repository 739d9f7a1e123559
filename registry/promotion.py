"""Moving the `production` alias: promote on a passed gate decision, roll back, hand off to serving.

Concurrency: MLflow has no compare-and-swap on aliases, but experiment names are unique in its
database. Each move of production claims the next "epoch" by creating the experiment
`h3ops/<project>/production-<epoch>`; exactly one process can create it. The claim records the
move; the winner applies it, and anyone who finds a claim not yet applied (the winner crashed)
applies it for them, so a crash never leaves production half-moved for good. The loser fails with
a message naming the winner.
"""
from __future__ import annotations

import getpass
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from h3ops import atomic
from registry.api import PREVIOUS, PRODUCTION, RegistryError, VersionRef, _is, model_name
from registry.checkpoints import TAG

EPOCH = f"{TAG}production_epoch"


class PromotionConflict(RegistryError):
    """Production moved concurrently (or since the gate ran); nothing was moved by this call."""


@dataclass
class Promotion:
    promoted: bool
    production: str | None
    previous: str | None
    decision_run_id: str | None = None
    message: str = ""
    epoch: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _decision_dict(decision: Any) -> dict[str, Any]:
    if hasattr(decision, "to_dict"):
        return decision.to_dict()
    return dict(decision) if isinstance(decision, dict) else decision  # anything else is refused


def log_decision(reg, project: str, decision: dict[str, Any], model_uri: str) -> str:
    """Every decision is logged, pass or fail, with its rules as params/tags and the full record."""
    exp = reg.experiment_id(f"h3ops/{project}/gate")
    run = reg.client.create_run(exp, tags={
        "mlflow.runName": f"gate-{model_uri.rsplit('/', 2)[-2]}-v{model_uri.rsplit('/', 1)[-1]}",
        f"{TAG}model_uri": model_uri, f"{TAG}passed": str(bool(decision.get("passed"))).lower(),
        f"{TAG}forced": str(bool(decision.get("forced"))).lower(),
        f"{TAG}suite_digest": str(decision.get("suite_digest", ""))})
    rid = run.info.run_id
    for r in decision.get("rules", []):
        reg.client.set_tag(rid, f"{TAG}rule.{r['name']}", f"{'pass' if r['passed'] else 'fail'}: {r['detail']}"[:4900])
    reg.client.log_dict(rid, decision, "decision.json")
    reg.client.set_terminated(rid, "FINISHED")
    return rid


def _epoch(reg, project: str) -> int:
    rm = reg.client.get_registered_model(model_name(project, "merged"))
    return int((rm.tags or {}).get(EPOCH, "0"))


def _claim(reg, project: str, epoch: int, move: dict[str, str]) -> dict[str, str] | None:
    """Create the claim for `epoch`; None if we won, else the winner's recorded move."""
    name = f"h3ops/{project}/production-{epoch:06d}"
    loc = f"{reg.artifact_location}/claims-{project}-{epoch:06d}" if reg.artifact_location else None
    try:
        reg.client.create_experiment(name, artifact_location=loc, tags={f"{TAG}{k}": v for k, v in move.items()})
        return None
    except Exception as e:
        if not _is(e, "RESOURCE_ALREADY_EXISTS"):
            raise
    tags = reg.client.get_experiment_by_name(name).tags
    return {k[len(TAG):]: v for k, v in tags.items() if k.startswith(TAG)}


def _upsert(fn, *args, attempts: int = 6) -> None:
    """MLflow sets a tag or alias by select-then-insert; two writers of the same value can collide
    on the primary key. The value is the same either way, so retry until one write lands."""
    for i in range(attempts):
        try:
            fn(*args)
            return
        except Exception as e:
            text = str(e)
            if i == attempts - 1 or not any(m in text for m in ("duplicate key", "UNIQUE constraint", "IntegrityError")):
                raise
            time.sleep(0.05 * (i + 1))


def _apply(reg, project: str, epoch: int, move: dict[str, str]) -> None:
    """Idempotent: setting the same aliases and tags twice is harmless (roll-forward relies on it)."""
    name = model_name(project, "merged")
    if move.get("previous"):
        _upsert(reg.client.set_registered_model_alias, name, PREVIOUS, move["previous"])
    else:
        try:
            reg.client.delete_registered_model_alias(name, PREVIOUS)
        except Exception:
            pass
    # The single call that switches what serving sees.
    _upsert(reg.client.set_registered_model_alias, name, PRODUCTION, move["production"])
    for k in ("action", "by", "reason", "at", "decision_run"):
        _upsert(reg.client.set_model_version_tag, name, move["production"], f"{TAG}promoted_{k}", move.get(k, ""))
    _upsert(reg.client.set_registered_model_tag, name, EPOCH, str(epoch))


def _move(reg, project: str, target: VersionRef, expected: str | None, action: str, by: str | None,
          reason: str, decision_run: str = "") -> tuple[int, VersionRef | None]:
    epoch = _epoch(reg, project)  # read before checking production: see module docstring
    current = reg.production(project)
    if (current.version if current else None) != expected:
        raise PromotionConflict(f"{project}: production is {current.uri if current else '(none)'}, but this "
                                f"{action} expected {'version ' + expected if expected else '(none)'}; "
                                "it moved since the decision was made: re-run the gate")
    move = {"action": action, "production": target.version, "previous": current.version if current else "",
            "by": by or getpass.getuser(), "reason": reason[:4000], "at": _now(), "decision_run": decision_run,
            "pid": str(os.getpid())}
    winner = _claim(reg, project, epoch + 1, move)
    if winner is not None:
        _apply(reg, project, epoch + 1, winner)  # finish the winner's move if it crashed midway
        raise PromotionConflict(f"{project}: a concurrent {winner.get('action', 'promotion')} by "
                                f"{winner.get('by')} (pid {winner.get('pid')}) moved production to version "
                                f"{winner.get('production')} first; this {action} of version "
                                f"{target.version} was not applied")
    _apply(reg, project, epoch + 1, move)
    return epoch + 1, current


def promote(reg, project: str, model_uri: str | VersionRef, decision: Any = None, *, policy: Any = None,
            force: bool = False, by: str | None = None, reason: str | None = None,
            manifest_path: str | None = None) -> Promotion:
    """Gate and apply: on pass, production → candidate and previous-production → old holder.

    The decision is recomputed here from the registry's logged scores and `policy` (the gate's
    defaults when None); a given `decision` record must match it (registry/decisions.py). Only
    `force=True` with a `reason` bypasses the gate; the bypass is recorded on the version, in the
    claim of the move and as a gate run tagged `h3ops.forced`."""
    from registry.decisions import verified_decision
    from registry.references import gate_inputs

    target = reg.resolve(model_uri)
    if target.name != model_name(project, "merged"):
        raise RegistryError(f"{target.uri}: only versions of {model_name(project, 'merged')} can hold "
                            "production; register the checkpoint as kind 'merged' first")
    if force:
        return _force(reg, project, target, by, reason, manifest_path)
    if decision is None:
        from evaluation.gate import GatePolicy

        pol = policy if isinstance(policy, GatePolicy) else GatePolicy.from_mapping(policy)
        d = gate_inputs(reg, project, target).decide(pol).to_dict()
    else:
        d = verified_decision(reg, project, target, _decision_dict(decision), policy)
    rid = log_decision(reg, project, d, target.uri)
    if not d.get("passed"):
        cur = reg.production(project)
        return Promotion(False, cur.uri if cur else None, None, rid, "gate failed: nothing moved",
                         details={"decision": d})
    expected = d.get("production")
    expected_version = reg.resolve(expected).version if expected else None
    epoch, old = _move(reg, project, target, expected_version, "promote", by,
                       reason or "gate passed", rid)
    result = Promotion(True, target.uri, old.uri if old else None, rid,
                       f"production → {target.uri}" + (f" (previous {old.uri})" if old else ""), epoch,
                       details={"decision": d})
    if manifest_path:
        result.details["manifest"] = write_serving_manifest(reg, project, manifest_path)
    return result


def _force(reg, project: str, target: VersionRef, by: str | None, reason: str | None,
           manifest_path: str | None) -> Promotion:
    """The one way around the gate: explicit, with a reason, audited."""
    if not (reason or "").strip():
        raise RegistryError("a forced promotion bypasses the gate and needs a reason (--reason TEXT); it is "
                            "recorded in the audit trail. Nothing moved")
    cur = reg.production(project)
    d = {"passed": True, "forced": True, "reason": reason, "candidate": target.uri,
         "production": cur.uri if cur else None, "rules": [], "notes": ["forced promotion: the gate was bypassed"]}
    rid = log_decision(reg, project, d, target.uri)
    epoch, old = _move(reg, project, target, cur.version if cur else None, "force-promote", by, reason, rid)
    result = Promotion(True, target.uri, old.uri if old else None, rid,
                       f"production → {target.uri} (forced: {reason})" + (f" (previous {old.uri})" if old else ""),
                       epoch, details={"decision": d})
    if manifest_path:
        result.details["manifest"] = write_serving_manifest(reg, project, manifest_path)
    return result


def rollback(reg, project: str, *, by: str | None = None, reason: str = "rollback",
             manifest_path: str | None = None) -> Promotion:
    """Swap production and previous-production back."""
    cur, prev = reg.production(project), reg.previous_production(project)
    if cur is None or prev is None:
        raise RegistryError(f"{project}: nothing to roll back to (production {cur.uri if cur else '(none)'}, "
                            f"previous-production {prev.uri if prev else '(none)'})")
    epoch, old = _move(reg, project, prev, cur.version, "rollback", by, reason)
    result = Promotion(True, prev.uri, cur.uri, None, f"rolled back: production → {prev.uri}", epoch)
    if manifest_path:
        result.details["manifest"] = write_serving_manifest(reg, project, manifest_path)
    return result


def write_serving_manifest(reg, project: str, path: str, *, s3_client: Any = None) -> dict[str, Any]:
    """What serving polls: the production model's URI, digest, version, scores and time."""
    ref = reg.production(project)
    if ref is None:
        raise RegistryError(f"{project}: no production version to hand to serving")
    scores = reg.get_scores(ref)
    doc = {"project": project, "model_uri": ref.uri, "name": ref.name, "version": ref.version,
           "content_digest": ref.tags.get(f"{TAG}content_digest"),
           "source": reg.client.get_model_version(ref.name, ref.version).source,
           "scores": scores.to_dict() if scores else None, "written_at": _now(),
           "tracking_uri": reg.tracking_uri}
    body = json.dumps(doc, indent=2, sort_keys=True).encode()
    if str(path).startswith("s3://"):
        bucket, _, key = str(path)[5:].partition("/")
        if not key:
            raise RegistryError(f"{path}: an s3:// manifest location needs a key")
        if s3_client is None:
            from h3ops import s3
            s3_client = s3.client()
        s3_client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    else:
        atomic.write_bytes(path, body)  # a poller never reads half a manifest
    return doc
