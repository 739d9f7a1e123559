"""A gate decision is a claim; promotion believes only what it can recompute.

`verified_decision` recomputes the decision for the candidate from the registry's logged scores
(registry.references.gate_inputs: scores bound to content and suite digests) under the policy the
promoter applies, and compares the record with it field by field. A hand-edited record, one made
for other metrics (`h3ops gate` on score files: candidate null), under another policy, against
another production or continual sequence, or with any rule changed is refused with the mismatch
named. The recomputed decision, not the record, is what promotion applies and logs.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from registry.api import RegistryError, VersionRef


class DecisionRefused(RegistryError):
    """The decision record does not match what the registry's scores and the policy give."""


def _policy(policy: Any):
    from evaluation.gate import GatePolicy

    return policy if isinstance(policy, GatePolicy) else GatePolicy.from_mapping(policy)


def _rule_view(rules: Any) -> list[tuple[Any, Any, Any]]:
    if not isinstance(rules, list):
        return [("<not a list>", rules, None)]
    return [(r.get("name"), r.get("passed"), r.get("detail")) if isinstance(r, dict) else (r, None, None)
            for r in rules]


def _same_scores(a: Any, b: dict[str, float]) -> bool:
    if not isinstance(a, dict) or set(a) != set(b):
        return False
    return all(isinstance(a[k], (int, float)) and math.isclose(a[k], b[k], rel_tol=0, abs_tol=1e-9) for k in b)


def mismatches(claimed: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Every field where the record differs from the recomputed decision, as readable lines."""
    out = []
    for key in ("passed", "candidate", "production", "continual", "suite_digest", "policy"):
        if claimed.get(key) != actual.get(key):
            out.append(f"{key}: the record says {claimed.get(key)!r}, the registry gives {actual.get(key)!r}")
    if not _same_scores(claimed.get("candidate_scores"), actual["candidate_scores"]):
        out.append(f"candidate_scores: the record says {claimed.get('candidate_scores')!r}, the registry's logged "
                   f"scores are {actual['candidate_scores']!r}")
    want, got = _rule_view(actual["rules"]), _rule_view(claimed.get("rules"))
    for i in range(max(len(want), len(got))):
        w, g = (want[i] if i < len(want) else None), (got[i] if i < len(got) else None)
        if w != g:
            name = (w or g)[0]
            out.append(f"rule {name}: the record says {g[1:] if g else 'nothing'}, "
                       f"the registry gives {w[1:] if w else 'no such rule'}")
    return out


def verified_decision(reg, project: str, target: VersionRef, claimed: dict[str, Any], policy: Any) -> dict[str, Any]:
    """The recomputed decision for `target` if `claimed` matches it; else DecisionRefused (or
    PromotionConflict when production has moved since the decision was made)."""
    from registry.promotion import PromotionConflict
    from registry.references import gate_inputs

    if not isinstance(claimed, dict):
        raise DecisionRefused(f"decision refused: expected a decision record (a JSON object), got "
                              f"{type(claimed).__name__}")
    if claimed.get("candidate") != target.uri:
        what = ("names no candidate (null): it was not made by the gate for a registered version (`h3ops gate` on "
                "score files decides nothing about the registry)") if not claimed.get("candidate") \
            else f"is about {claimed['candidate']}"
        raise DecisionRefused(f"decision refused: the record {what}, not {target.uri}")
    current = reg.production(project)
    if claimed.get("production") != (current.uri if current else None):
        raise PromotionConflict(f"{project}: production is {current.uri if current else '(none)'}, but the decision "
                                f"was made against {claimed.get('production') or '(none)'}; it moved since the "
                                "decision was made: re-run the gate")
    pol = _policy(policy)
    # Recomputed under the record's suite digest (the DAG's is its config's); a record without one
    # is compared with the candidate's latest scores, and the mismatch list then says so.
    suite = claimed.get("suite_digest")
    suite = suite if isinstance(suite, str) and suite.startswith("sha256:") else None
    actual = gate_inputs(reg, project, target, suite_digest=suite).decide(pol).to_dict()
    wrong = mismatches(claimed, actual)
    if wrong:
        raise DecisionRefused("decision refused: the record does not match the decision recomputed from the "
                              "registry's logged scores and the policy " + str(asdict(pol)) + ":\n  "
                              + "\n  ".join(wrong) + "\n(re-run the gate, or --force --reason TEXT to bypass it, "
                              "audited)")
    actual["verified_record"] = True
    return actual
