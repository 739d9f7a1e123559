"""What the gate compares a candidate with, chosen one way for every caller.

The DAG's gate step, `h3ops promote` and promotion's re-check of a decision all call
`gate_inputs`: the candidate, the current production model, the continual-DPO sequence trained on
the candidate's data, and each one's scores bound to (content digest, suite digest).

"The same data": a merged candidate's parents are registered candidates, each tagged with its
dimension and data digest. The continual sequence it must beat is the newest registered chain of
continual stages whose (dimension → data digest) equals the candidate's. A sequence trained on
other data is no reference; with none for this data the gate has no continual scores and fails
(GatePolicy.require_continual). A candidate registered without that lineage (`h3ops register`
with no parents) is compared with the newest sequence, and the decision notes it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from registry.api import RegistryError, VersionRef
from registry.checkpoints import TAG


@dataclass
class GateInputs:
    candidate: VersionRef
    candidate_scores: Any  # evaluation.scoring.Scores
    production: VersionRef | None
    production_scores: Any
    continual: list[VersionRef]
    continual_scores: list[Any]
    notes: list[str] = field(default_factory=list)

    @property
    def suite_digest(self) -> str:
        return self.candidate_scores.suite_digest

    def versions(self) -> dict[str, Any]:
        return {"candidate": self.candidate.uri, "production": self.production.uri if self.production else None,
                "continual": [r.uri for r in self.continual]}

    def decide(self, policy: Any = None):
        """The gate's decision on these inputs (evaluation.gate.decide), with the choice's notes."""
        from evaluation.gate import decide

        decision = decide(self.candidate_scores, self.production_scores, self.continual_scores, policy,
                          versions=self.versions())
        decision.notes.extend(self.notes)
        return decision


def training_data(reg, ref: VersionRef) -> dict[str, str] | None:
    """{dimension: data digest} of the registered candidates a merge was made from; None if its
    lineage names no registered candidate (then the data it was trained on is unknown)."""
    data: dict[str, str] = {}
    for p in json.loads(ref.tags.get(f"{TAG}parents") or "[]"):
        uri = p.get("uri", "")
        if not uri.startswith("models:/"):
            continue
        parent = reg.resolve(uri)
        if parent.tags.get(f"{TAG}kind") == "candidate" and parent.tags.get(f"{TAG}dimension"):
            data[parent.tags[f"{TAG}dimension"]] = parent.tags.get(f"{TAG}data_digest", "")
    return data or None


def _chain(end: VersionRef, by_digest: dict[str, VersionRef]) -> list[VersionRef]:
    """Stage 1 first: `end` and its chain of registered continual parents (matched by content digest)."""
    chain = [end]
    while True:
        parents = json.loads(chain[-1].tags.get(f"{TAG}parents") or "[]")
        nxt = next((by_digest[p["digest"]] for p in parents
                    if p.get("digest") in by_digest and by_digest[p["digest"]] not in chain), None)
        if nxt is None:
            return chain[::-1]
        chain.append(nxt)


def _stage_data(chain: list[VersionRef]) -> dict[str, str]:
    return {r.tags.get(f"{TAG}dimension", ""): r.tags.get(f"{TAG}data_digest", "") for r in chain}


def continual_sequence(reg, project: str, data: dict[str, str] | None = None) -> list[VersionRef]:
    """The newest continual sequence trained on exactly `data` ({dimension: data digest}); with
    `data` None, the newest sequence of all. [] when there is none."""
    refs = reg.versions(project, "continual")  # ascending versions
    by_digest = {r.tags.get(f"{TAG}content_digest"): r for r in refs}
    for end in reversed(refs):
        chain = _chain(end, by_digest)
        if data is None or _stage_data(chain) == data:
            return chain
    return []


def _scores(reg, ref: VersionRef, role: str, suite_digest: str | None):
    got = reg.get_scores(ref, suite_digest)
    if got is None:
        under = f" under suite digest {suite_digest[:19]}…" if suite_digest else ""
        raise RegistryError(f"{role} {ref.uri} has no evaluation scores{under} for its content "
                            f"{ref.tags.get(f'{TAG}content_digest', '?')[:19]}…: evaluate it first "
                            "(scores are never assumed, nor borrowed from other content)")
    return got


def references(reg, project: str, candidate: VersionRef) -> tuple[VersionRef | None, list[VersionRef], list[str]]:
    """(production, continual stages, notes): what `candidate` is compared with, scores aside
    (the DAG evaluates these before its gate step)."""
    data = training_data(reg, candidate)
    if data is None:
        return reg.production(project), continual_sequence(reg, project), [
            f"{candidate.uri} names no registered candidates as parents, so its training data is unknown: "
            "compared with the newest continual sequence"]
    stages = continual_sequence(reg, project, data)
    notes = [] if stages else [
        "no continual sequence is registered for the candidate's data "
        + ", ".join(f"{d}={v[:19]}…" for d, v in sorted(data.items()))
        + ": run the continual baseline on the same data first"]
    return reg.production(project), stages, notes


def gate_inputs(reg, project: str, candidate: str | VersionRef, *, suite_digest: str | None = None) -> GateInputs:
    """Everything the gate compares, with scores measured on each version's own content.

    `suite_digest`: the suite digest to compare under (the pipeline's evaluation settings); by
    default that of the candidate's latest scores. Raises RegistryError naming any version without
    scores under it."""
    cand = reg.resolve(candidate)
    cand_scores = _scores(reg, cand, "candidate", suite_digest)
    digest = cand_scores.suite_digest
    prod, stages, notes = references(reg, project, cand)
    prod_scores = _scores(reg, prod, "production", digest) if prod is not None else None
    cont_scores = [_scores(reg, r, f"continual stage {i + 1}", digest) for i, r in enumerate(stages)]
    return GateInputs(cand, cand_scores, prod, prod_scores, stages, cont_scores, notes)
