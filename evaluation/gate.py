"""The promotion gate as a pure function (spec/scoring.md, "The gate").

`decide` compares a candidate's 3H scores with production's and with every checkpoint of the latest
continual-DPO sequence and returns a record of every rule and its numbers. It never promotes
anything; the registry applies a passed decision.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from evaluation.scoring import DIMENSIONS, Scores, ScoringError, aggregate

RULES = ("average", "every_dimension")


class GateError(ValueError):
    """Inputs the gate refuses to compare (different suites, a bad policy). `field` names the
    policy field at fault, so a config error can point at `gate.<field>`."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class GatePolicy:
    """Per-project gate settings; defaults are the spec's. The pipeline config's `gate:` section
    is validated through this class (h3ops/config.py), so fields and bounds live only here.

    margin: the candidate's avg must exceed each reference avg by more than this (0.0 = strictly greater).
    max_regression: no dimension average may fall below production's by more than this many points.
    rule: "average" (the spec's default), or "every_dimension" which additionally requires every
    dimension average to beat production's and the best continual checkpoint's by `margin`.
    require_continual: with no continual-DPO scores the rule `beats_continual` fails (the platform's
    promise is to beat both references; a missing reference is not a pass).
    allow_unsafe_policy: a negative margin, a max_regression above 100 points (every dimension is on
    0-100, so such a bound is no bound) or require_continual false void the promise; each is
    refused unless this is true.
    """
    margin: float = 0.0
    max_regression: float = 1.0
    rule: str = "average"
    require_continual: bool = True
    allow_unsafe_policy: bool = False

    # Unknown keys are errors when pydantic validates a config's `gate:` section through this class.
    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        for name in ("margin", "max_regression"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise GateError(f"gate policy: {name} must be a finite number, got {v!r}", field=name)
        for name in ("require_continual", "allow_unsafe_policy"):
            if not isinstance(getattr(self, name), bool):
                raise GateError(f"gate policy: {name} must be true or false, got {getattr(self, name)!r}", field=name)
        if self.max_regression < 0:
            raise GateError(f"gate policy: max_regression must be >= 0, got {self.max_regression}",
                            field="max_regression")
        if self.rule not in RULES:
            raise GateError(f"gate policy: rule must be one of {list(RULES)}, got {self.rule!r}", field="rule")
        if self.allow_unsafe_policy:
            return
        unsafe = "; set allow_unsafe_policy: true to accept it"
        if self.margin < 0:
            raise GateError(f"gate policy: margin {self.margin:g} is negative: a candidate scoring below production "
                            f"or the continual baseline would pass{unsafe}", field="margin")
        if self.max_regression > 100:
            raise GateError(f"gate policy: max_regression {self.max_regression:g} is above 100 points: no "
                            f"regression of a 0-100 score would fail{unsafe}", field="max_regression")
        if not self.require_continual:
            raise GateError(f"gate policy: require_continual false lets a candidate pass without any continual-DPO "
                            f"reference{unsafe}", field="require_continual")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "GatePolicy":
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise GateError(f"gate policy: unknown field(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)


@dataclass
class Rule:
    name: str
    passed: bool
    detail: str
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass
class Decision:
    passed: bool
    rules: list[Rule]
    candidate: str | None
    production: str | None
    continual: list[str | None]
    suite: str
    suite_digest: str
    policy: dict[str, Any]
    notes: list[str]
    candidate_scores: dict[str, float]
    decided_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return summary(self.to_dict())


def summary(record: Mapping[str, Any]) -> str:
    """A decision record (Decision.to_dict()) as the few lines a person reads."""
    head = "PASS" if record.get("passed") else "FAIL"
    lines = [f"gate {head}: candidate {record.get('candidate') or '?'} vs production "
             f"{record.get('production') or '(none)'} [suite {record.get('suite')}]"]
    lines += [f"  [{'ok' if r['passed'] else 'FAIL'}] {r['name']}: {r['detail']}" for r in record.get("rules", [])]
    lines += [f"  note: {n}" for n in record.get("notes", [])]
    return "\n".join(lines)


def _scores(x: Scores | Mapping[str, float], suite: Any, what: str) -> Scores:
    if isinstance(x, Scores):
        return x
    try:
        return aggregate(x, suite)
    except ScoringError as e:
        # An incomplete evaluation cannot pass: refuse with the role named.
        raise ScoringError(f"{what}: {e}") from None


def decide(candidate: Scores | Mapping[str, float], production: Scores | Mapping[str, float] | None,
           continual: Sequence[Scores | Mapping[str, float]], policy: GatePolicy | Mapping | None = None, *,
           suite: Any = None, versions: Mapping[str, Any] | None = None) -> Decision:
    """Gate a candidate. `versions` may name what was compared: {"candidate": uri, "production": uri,
    "continual": [uri, …]}; it is only recorded."""
    pol = policy if isinstance(policy, GatePolicy) else GatePolicy.from_mapping(policy)
    versions = dict(versions or {})
    cand = _scores(candidate, suite, "candidate")
    # Mappings are scored with the candidate's suite, so refusal below only concerns Scores objects.
    prod = None if production is None else _scores(production, suite or cand.suite, "production")
    cont = [_scores(c, suite or cand.suite, f"continual[{i}]") for i, c in enumerate(continual)]
    for role, s in [("production", prod)] + [(f"continual[{i}]", c) for i, c in enumerate(cont)]:
        if s is not None and s.suite_digest != cand.suite_digest:
            raise GateError(f"{role} was scored with suite {s.suite!r} ({s.suite_digest[:19]}…), the candidate "
                            f"with {cand.suite!r} ({cand.suite_digest[:19]}…): scores from different suites "
                            "cannot be compared; re-evaluate with one suite")

    rules: list[Rule] = []
    notes: list[str] = []
    m = pol.margin
    if prod is None:
        notes.append("no production scores (first run): only the continual rule applies")
    else:
        ok = cand.avg > prod.avg + m
        rules.append(Rule("beats_production", ok,
                          f"avg {cand.avg:.2f} {'>' if ok else '<='} production {prod.avg:.2f} + margin {m:g}",
                          {"candidate_avg": cand.avg, "production_avg": prod.avg, "margin": m}))
    if cont:
        best_i = max(range(len(cont)), key=lambda i: cont[i].avg)
        best = cont[best_i].avg
        ok = cand.avg > best + m
        rules.append(Rule("beats_continual", ok,
                          f"avg {cand.avg:.2f} {'>' if ok else '<='} best continual {best:.2f} "
                          f"(stage {best_i + 1} of {len(cont)}) + margin {m:g}",
                          {"candidate_avg": cand.avg, "continual_avgs": [c.avg for c in cont],
                           "best_index": best_i, "margin": m}))
    elif pol.require_continual:
        rules.append(Rule("beats_continual", False,
                          "no continual-DPO checkpoints to compare with: the gate needs the continual baseline "
                          "trained on the candidate's data (policy require_continual)",
                          {"candidate_avg": cand.avg, "continual_avgs": [], "margin": m}))
    else:
        notes.append("no continual checkpoints given: the continual rule was not applied "
                     "(require_continual false, an unsafe policy)")
    if prod is not None:
        drops = {d: prod.dimension(d) - cand.dimension(d) for d in DIMENSIONS}
        worst = max(drops, key=drops.get)
        ok = all(v <= pol.max_regression for v in drops.values())
        rules.append(Rule("no_regression", ok,
                          f"largest drop vs production {drops[worst]:.2f} ({worst}) "
                          f"{'<=' if ok else '>'} max_regression {pol.max_regression:g}",
                          {"drops": drops, "max_regression": pol.max_regression}))
    if pol.rule == "every_dimension":
        refs = ([("production", prod)] if prod is not None else []) + \
               [(f"continual[{i}]", c) for i, c in enumerate(cont)]
        failures = [f"{d} {cand.dimension(d):.2f} <= {name} {s.dimension(d):.2f} + {m:g}"
                    for name, s in refs for d in DIMENSIONS if not cand.dimension(d) > s.dimension(d) + m]
        rules.append(Rule("every_dimension", not failures,
                          "every dimension beats every reference" if not failures else "; ".join(failures),
                          {"failures": failures}))
    if not rules:
        # Nothing to compare against is not a pass: a gate must have evidence.
        rules.append(Rule("has_reference", False, "no production and no continual scores to compare against"))
    cont_versions = list(versions.get("continual") or [None] * len(cont))
    return Decision(
        passed=all(r.passed for r in rules), rules=rules, candidate=versions.get("candidate"),
        production=versions.get("production"), continual=cont_versions, suite=cand.suite,
        suite_digest=cand.suite_digest, policy=asdict(pol), notes=notes, candidate_scores=cand.averages(),
    )
