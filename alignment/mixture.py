"""Data-mixture baselines of the paper's Table 2: each selects rows into one mixed dataset
(dimension "mixture", with a digest) that a single DPO job then trains on, so "mix data" and
"merge models" are compared on the same footing. The dataset's provenance records the method, its
settings, the scorer's identity (alignment.scorers) and the input datasets' digests.

heuristic  Mix honesty & harmlessness data with helpfulness data at a fixed ratio
           n(honesty+harmlessness) / n(helpfulness) (the paper tries 1/5, 1/10, 1/20; 1/10 is
           usually best).
reward     Reward-model selection. Rule "on_policy" is SimPO's pipeline (alignment.onpolicy): the
           policy samples answers to every prompt, the scorer grades them, best vs worst. The
           other rules re-score the existing pairs with the scorer and keep some: "top_fraction"
           (largest chosen−rejected margin first), "margin" (margin > min_margin), or "relabel"
           (the scorer's preferred answer becomes chosen).
hummer     Hummer-style conflict selection (see `conflicts`).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from alignment.dataset import DatasetRef, load_dataset, write_rows
from alignment.schema import DIMENSIONS, MIXTURE, prompt_text
from alignment.scorers import Scorer, checked, identity, overall

METHODS = ("heuristic", "reward", "hummer")
RULES = ("on_policy", "top_fraction", "margin", "relabel")


def _order(rows: list[dict], seed: int) -> list[dict]:
    """A seeded, content-based order: the same rows and seed always give the same sample."""
    return sorted(rows, key=lambda r: hashlib.sha256(f"{seed}:{r['id']}".encode()).digest())


def _components(dimension: str) -> set[str]:
    return set(dimension.split("&"))


def heuristic_mix(helpful: list[dict], others: list[list[dict]], *, ratio: float = 0.1, seed: int = 0) -> list[dict]:
    """All helpfulness rows plus ratio × as many rows drawn evenly from the other datasets."""
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if not helpful:
        raise ValueError("heuristic mixing needs helpfulness rows")
    pools = [_order(p, seed) for p in others if p]
    available = sum(map(len, pools))
    want = round(ratio * len(helpful))
    if available < want:  # too little honesty/harmlessness data: shrink the helpfulness side instead
        helpful = _order(helpful, seed)[:max(1, round(available / ratio))]
        want = available
    picked: list[dict] = []
    i = 0
    while len(picked) < want:  # round-robin so each other dimension gets an even share
        for p in pools:
            if i < len(p) and len(picked) < want:
                picked.append(p[i])
        i += 1
    return list(helpful) + picked


def reward_select(rows: list[dict], scorer: Scorer, *, rule: str = "top_fraction", keep: float = 0.5,
                  min_margin: float = 0.0, weights: dict[str, float] | None = None) -> list[dict]:
    """Re-score the existing pairs and keep some by `rule` (not on_policy: see alignment.onpolicy)."""
    if rule not in RULES or rule == "on_policy":
        raise ValueError(f"unknown pair rule {rule!r}; expected one of {RULES[1:]}")
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    prompts = [prompt_text(r["prompt"]) for r in rows]
    sc = checked(scorer, prompts, [r["chosen"] for r in rows], need=list(weights or ()))
    sr = checked(scorer, prompts, [r["rejected"] for r in rows], need=list(weights or ()))
    scored = []
    for r, c, j in zip(rows, sc, sr):
        margin = overall(c, weights) - overall(j, weights)
        r = {**r, "meta": {**r.get("meta", {}), "rm_margin": margin}}
        if rule == "relabel" and margin < 0:
            r.update(chosen=r["rejected"], rejected=r["chosen"], id=r["id"] + "-relabelled")
            r["meta"]["rm_margin"] = margin = -margin
        scored.append((margin, r))
    kept = [(m, r) for m, r in scored if m > min_margin]  # the RM must agree with the label
    if rule == "top_fraction":
        kept.sort(key=lambda t: (-t[0], t[1]["id"]))
        kept = kept[:max(1, round(keep * len(rows)))]
    return [r for _, r in kept]


def conflicts(rows: list[dict], judge: Scorer, dimensions: Sequence[str] = DIMENSIONS) -> list[float]:
    """Severity of each pair's conflict with the dimensions it is not about (0 = no conflict).

    What Hummer defines (Jiang et al., 2024, arXiv 2405.11647): the alignment dimension conflict
    (ADC) of a preference dataset is measured on a reward model, not on single pairs. A reward model
    trained on the data is fine-tuned further on one alignment dimension's pairs and evaluated again
    on every dimension's test pairs; ADC is the second-order moment of the negative deviations (the
    accuracy each other dimension loses), over the dimensions. Hummer's dataset is UltraFeedback
    re-annotated by GPT-4 with each pair's alignment dimension, kept to dimensions that conflict
    little with each other.

    What we do: a reward model fine-tuned per dimension inside every benchmark run is out of reach,
    so conflict is read per pair from the scorer's per-dimension scores J_d (a reward model's
    objectives or a chat judge's ratings; the scorer must have one per dimension). A pair of
    dimension a conflicts with d ∉ a when J_d(rejected) > J_d(chosen): training on it pushes d
    down, the pair-level cause of the accuracy loss the paper measures. Its severity is
    Σ_d max(0, J_d(rejected) − J_d(chosen)). `adc` is the fraction of conflicting pairs: our proxy,
    not the paper's number.
    """
    prompts = [prompt_text(r["prompt"]) for r in rows]
    sc = checked(judge, prompts, [r["chosen"] for r in rows], need=dimensions)
    sr = checked(judge, prompts, [r["rejected"] for r in rows], need=dimensions)
    out = []
    for r, c, j in zip(rows, sc, sr):
        others = [d for d in dimensions if d not in _components(r["dimension"])]
        out.append(sum(max(0.0, j[d] - c[d]) for d in others))
    return out


def adc(severity: Sequence[float]) -> float:
    """Our conflict proxy for a mixture: the fraction of its pairs that conflict (see `conflicts`)."""
    return sum(1 for s in severity if s > 0) / len(severity) if severity else 0.0


def hummer_select(rows: list[dict], judge: Scorer, *, threshold: float = 0.2,
                  dimensions: Sequence[str] = DIMENSIONS, severity: Sequence[float] | None = None) -> list[dict]:
    """Every non-conflicting pair and the mildest conflicting ones while adc ≤ threshold. The 3H
    paper tuned this threshold without stating its value; 0.2 is our default."""
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    sev = list(severity) if severity is not None else conflicts(rows, judge, dimensions)
    n_conf = sum(1 for s in sev if s > 0)
    n_ok = len(rows) - n_conf
    # the largest c with c / (n_ok + c) <= threshold
    allowed = int(threshold * n_ok / (1 - threshold) + 1e-9)
    conflicting = sorted((s, rows[i]["id"], i) for i, s in enumerate(sev) if s > 0)  # mildest first
    keep_idx = {i for i, s in enumerate(sev) if s == 0} | {i for _, _, i in conflicting[:allowed]}
    return [{**r, "meta": {**r.get("meta", {}), "conflict": sev[i]}} for i, r in enumerate(rows) if i in keep_idx]


def _rows_by_dimension(datasets: dict[str, str | Path]) -> tuple[dict[str, list[dict]], dict[str, str]]:
    rows, digests = {}, {}
    for dim, path in datasets.items():
        ds = load_dataset(path, dimension=dim)
        rows[dim], digests[dim] = ds.train, ds.digest
    return rows, digests


def build_mixture(method: str, datasets: dict[str, str | Path], out_dir: str | Path, *,
                  scorer: Scorer | None = None, ratio: float = 0.1, seed: int = 0, rule: str = "top_fraction",
                  keep: float = 0.5, min_margin: float = 0.0, threshold: float = 0.2,
                  policy: str | Path | None = None, samples: int | None = None, temperature: float | None = None,
                  top_p: float | None = None, max_new_tokens: int = 256,
                  overwrite: bool = False) -> DatasetRef:
    """One mixed dataset from per-dimension datasets ({dimension: dataset}) by a Table 2 method.

    Everything is selected before anything is written: a scorer that fails or replies something
    that is not a score raises ScorerError and leaves no dataset behind."""
    if method not in METHODS:
        raise ValueError(f"unknown mixture method {method!r}; expected one of {METHODS}")
    if not datasets:
        raise ValueError("no datasets to mix")
    by_dim, digests = _rows_by_dimension(datasets)
    params: dict = {"seed": seed}
    if method == "heuristic":
        if "helpfulness" not in by_dim:
            raise ValueError("heuristic mixing needs a 'helpfulness' dataset")
        rows = heuristic_mix(by_dim["helpfulness"], [r for d, r in sorted(by_dim.items()) if d != "helpfulness"],
                             ratio=ratio, seed=seed)
        params["ratio"] = ratio
    else:
        if scorer is None:
            raise ValueError(f"the {method} baseline needs a scorer (a reward model or judge)")
        everything = [r for d in sorted(by_dim) for r in by_dim[d]]
        if method == "reward" and rule == "on_policy":
            rows, params["counts"] = _on_policy(everything, scorer, policy, params, seed=seed, samples=samples,
                                                temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        elif method == "reward":
            rows = reward_select(everything, scorer, rule=rule, keep=keep, min_margin=min_margin)
            params.update(rule=rule, keep=keep, min_margin=min_margin)
        else:
            sev = conflicts(everything, scorer)
            rows = hummer_select(everything, scorer, threshold=threshold, severity=sev)
            params.update(threshold=threshold, adc_before=adc(sev), adc_after=adc([r["meta"]["conflict"] for r in rows]))
        params["scorer"] = identity(scorer)
    if not rows:
        raise ValueError(f"the {method} baseline selected no rows; nothing written")
    return write_rows(rows, out_dir, dimension=MIXTURE, overwrite=overwrite,
                      provenance={"method": method, "params": params, "inputs": digests})


def _on_policy(rows: list[dict], scorer: Scorer, policy: str | Path | None, params: dict, *, seed: int,
               samples: int | None, temperature: float | None, top_p: float | None,
               max_new_tokens: int) -> tuple[list[dict], dict]:
    from alignment import onpolicy
    from h3ops.digest import digest_dir

    if policy is None:
        raise ValueError("on-policy reward selection needs the policy that samples the answers")
    settings = {"samples": samples or onpolicy.SAMPLES, "temperature": temperature or onpolicy.TEMPERATURE,
                "top_p": top_p or onpolicy.TOP_P, "max_new_tokens": max_new_tokens}
    params.update(rule="on_policy", policy={"path": str(policy), "digest": digest_dir(policy)}, **settings)
    return onpolicy.on_policy_pairs(rows, policy, scorer, seed=seed, **settings)
