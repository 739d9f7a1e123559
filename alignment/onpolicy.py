"""On-policy preference pairs, as SimPO's pipeline builds them: the policy itself answers every
prompt several times (sampled, one seed per answer), a scorer grades every answer, and the best-
and worst-graded answers become chosen and rejected.

SimPO's on-policy data (Meng et al., 2024; its v0.2 Llama-3 and Gemma-2 models) samples five answers
per UltraFeedback prompt from the SFT/instruct model at temperature 0.8, top-p 0.95, scores them with
ArmoRM and keeps argmax vs argmin; prompts whose answers are all alike are dropped. We do the same
with the policy the mixture's DPO job starts from (the benchmark's base) and any Scorer (a reward
model or a chat judge). A multi-objective score is reduced to one number by `weights` (default:
the mean of the objectives, see alignment.scorers.overall).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from alignment.schema import make_row, prompt_text
from alignment.scorers import Scorer, checked, overall

SAMPLES, TEMPERATURE, TOP_P = 5, 0.8, 0.95


def sample(policy: str | Path, prompts: Sequence, *, n: int = SAMPLES, seed: int = 0,
           temperature: float = TEMPERATURE, top_p: float = TOP_P, max_new_tokens: int = 256,
           batch_size: int = 8) -> list[list[str]]:
    """n sampled answers per prompt (answer k with seed + k), in the policy's chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluation.generate import generate

    if n < 2:
        raise ValueError(f"on-policy pairs need at least 2 samples per prompt, got {n}")
    tok = AutoTokenizer.from_pretrained(policy)
    on_gpu = torch.cuda.is_available()  # the checkpoint's own dtype on a GPU; fp32 on CPUs
    model = AutoModelForCausalLM.from_pretrained(policy, dtype="auto" if on_gpu else torch.float32)
    model.to("cuda" if on_gpu else "cpu").eval()
    answers: list[list[str]] = [[] for _ in prompts]
    for k in range(n):
        torch.manual_seed(seed + k)
        for i, g in enumerate(generate(model, tok, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size,
                                       sampling={"temperature": temperature, "top_p": top_p})):
            answers[i].append(g.text.strip())
    return answers


def best_vs_worst(rows: Sequence[dict], answers: Sequence[Sequence[str]], scorer: Scorer, *,
                  weights: dict[str, float] | None = None) -> tuple[list[dict], dict]:
    """One pair per row's prompt: its best- vs worst-scored answer. → (pairs, counts)."""
    flat = [(i, a) for i, ans in enumerate(answers) for a in dict.fromkeys(a for a in ans if a)]
    scores = checked(scorer, [prompt_text(rows[i]["prompt"]) for i, _ in flat], [a for _, a in flat],
                     need=list(weights or ()))
    graded: list[list[tuple[float, str]]] = [[] for _ in rows]
    for (i, a), s in zip(flat, scores):
        graded[i].append((overall(s, weights), a))
    pairs, skipped = [], 0
    for row, g in zip(rows, graded):
        # the first of equal scores wins, so ties resolve by sampling order, not by text
        best = max(g, key=lambda t: t[0], default=None)
        worst = min(g, key=lambda t: t[0], default=None)
        if best is None or best[0] == worst[0]:  # one distinct answer, or all scored alike: no preference
            skipped += 1
            continue
        pairs.append(make_row(row["prompt"], best[1], worst[1], dimension=row["dimension"], source="on-policy",
                              meta={"from": row["id"], "rm_chosen": best[0], "rm_rejected": worst[0],
                                    "answers": len(g)}))
    return pairs, {"prompts": len(rows), "pairs": len(pairs), "skipped": skipped}


def on_policy_pairs(rows: Sequence[dict], policy: str | Path, scorer: Scorer, *, samples: int = SAMPLES,
                    seed: int = 0, temperature: float = TEMPERATURE, top_p: float = TOP_P,
                    max_new_tokens: int = 256, weights: dict[str, float] | None = None) -> tuple[list[dict], dict]:
    """SimPO-style pairs for the distinct prompts of `rows` (the first row of a prompt names it)."""
    by_prompt: dict[str, dict] = {}
    for r in rows:
        by_prompt.setdefault(prompt_text(r["prompt"]), r)
    firsts = list(by_prompt.values())
    answers = sample(policy, [r["prompt"] for r in firsts], n=samples, seed=seed, temperature=temperature,
                     top_p=top_p, max_new_tokens=max_new_tokens)
    return best_vs_worst(firsts, answers, scorer, weights=weights)
