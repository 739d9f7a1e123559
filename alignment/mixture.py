"""Data-mixture baselines of the paper's Table 2: each selects rows into one mixed dataset
(dimension "mixture", with a digest) that a single DPO job then trains on, so "mix data" and
"merge models" are compared on the same footing.

heuristic  Mix honesty & harmlessness data with helpfulness data at a fixed ratio
           n(honesty+harmlessness) / n(helpfulness) (the paper tries 1/5, 1/10, 1/20; 1/10 is
           usually best).
reward     Score every pair with a multi-objective reward model (ArmoRM in production; any local
           sequence-classification model whose labels name objectives) and keep pairs by a rule:
           "top_fraction" (largest chosen−rejected margin first), "margin" (margin > min_margin), or
           "relabel" (SimPO-style: the RM's preferred answer becomes chosen).
hummer     Hummer-style conflict selection. Hummer (Jiang et al., 2024) defines the alignment
           dimension conflict (ADC) as how much optimising one dimension's preferences works against
           the others. We measure it on the data with one judge per dimension (an objective of the
           scorer, or AI feedback): a pair of dimension a *conflicts* with dimension d ∉ a when d's
           judge prefers the rejected answer, J_d(rejected) > J_d(chosen). Its severity is the sum
           of those margins over the other dimensions. The mixture's ADC is the fraction of its
           pairs that conflict with at least one other dimension; the selection drops the most
           severe conflicting pairs until ADC ≤ threshold (default 20%, the paper's setting).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Protocol, Sequence

from alignment.dataset import DatasetRef, load_dataset, write_rows
from alignment.schema import DIMENSIONS, MIXTURE, prompt_text

METHODS = ("heuristic", "reward", "hummer")
RULES = ("top_fraction", "margin", "relabel")


class Scorer(Protocol):
    """Scores responses to prompts on named objectives (a multi-objective reward model)."""

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict[str, float]]: ...


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
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {RULES}")
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    prompts = [prompt_text(r["prompt"]) for r in rows]
    sc = scorer(prompts, [r["chosen"] for r in rows])
    sr = scorer(prompts, [r["rejected"] for r in rows])

    def agg(s: dict[str, float]) -> float:
        w = weights or {k: 1.0 / len(s) for k in s}
        return sum(w.get(k, 0.0) * v for k, v in s.items())

    scored = []
    for r, c, j in zip(rows, sc, sr):
        margin = agg(c) - agg(j)
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
    """Severity of each pair's conflict with the dimensions it is not about (0 = no conflict)."""
    prompts = [prompt_text(r["prompt"]) for r in rows]
    sc, sr = judge(prompts, [r["chosen"] for r in rows]), judge(prompts, [r["rejected"] for r in rows])
    out = []
    for r, c, j in zip(rows, sc, sr):
        others = [d for d in dimensions if d not in _components(r["dimension"]) and d in c and d in j]
        out.append(sum(max(0.0, j[d] - c[d]) for d in others))
    return out


def adc(severity: Sequence[float]) -> float:
    """The mixture's alignment dimension conflict: the fraction of its pairs that conflict."""
    return sum(1 for s in severity if s > 0) / len(severity) if severity else 0.0


def hummer_select(rows: list[dict], judge: Scorer, *, threshold: float = 0.2,
                  dimensions: Sequence[str] = DIMENSIONS) -> list[dict]:
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    sev = conflicts(rows, judge, dimensions)
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
                  overwrite: bool = False) -> DatasetRef:
    """One mixed dataset from per-dimension datasets ({dimension: dataset}) by a Table 2 method."""
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
        if method == "reward":
            rows = reward_select(everything, scorer, rule=rule, keep=keep, min_margin=min_margin)
            params.update(rule=rule, keep=keep, min_margin=min_margin)
        else:
            rows = hummer_select(everything, scorer, threshold=threshold)
            params.update(threshold=threshold, adc_before=adc(conflicts(everything, scorer)))
        params["scorer"] = getattr(scorer, "name", type(scorer).__name__)
    if not rows:
        raise ValueError(f"the {method} baseline selected no rows; nothing written")
    return write_rows(rows, out_dir, dimension=MIXTURE, overwrite=overwrite,
                      provenance={"method": method, "params": params, "inputs": digests})


class SequenceClassifierScorer:
    """A local sequence-classification reward model; each output label is an objective.

    Objectives are read from `config.id2label` (e.g. {0: "helpfulness", 1: "honesty", …}); ArmoRM's
    19 objectives map the same way when it is loaded with trust_remote_code.
    """

    def __init__(self, path: str | Path, *, batch_size: int = 8, trust_remote_code: bool = False,
                 objectives: Sequence[str] | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = str(path)
        self.tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model.eval()
        labels = self.model.config.id2label
        self.objectives = list(objectives or [labels[i] for i in range(len(labels))])
        self.batch_size = batch_size

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict[str, float]]:
        import torch

        out: list[dict[str, float]] = []
        for i in range(0, len(prompts), self.batch_size):
            texts = [self._chat(p, r) for p, r in zip(prompts[i:i + self.batch_size], responses[i:i + self.batch_size])]
            enc = self.tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=1024)
            with torch.no_grad():
                res = self.model(**enc)
            scores = getattr(res, "rewards", None)
            scores = scores if scores is not None else res.logits
            out += [dict(zip(self.objectives, row.float().tolist())) for row in scores]
        return out

    def _chat(self, prompt: str, response: str) -> str:
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(msgs, tokenize=False)
        return f"{prompt}\n{response}"


def function_scorer(fn: Callable[[str, str], dict[str, float]], name: str = "function") -> Scorer:
    """Wrap a per-pair scoring function (e.g. an AI-feedback judge client) as a Scorer."""
    def score(prompts, responses):
        return [fn(p, r) for p, r in zip(prompts, responses)]
    score.name = name  # type: ignore[attr-defined]
    return score
