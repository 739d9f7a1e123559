"""Scorers for the data-mixture baselines: something that grades responses to prompts on named
objectives, a reward model or a judge.

A scorer is called with prompts and responses and returns one {objective: score} per response.
It also has `identity()`, what a mixed dataset records as its lineage (which model or judge, with
what prompt): two datasets selected by different scorers never look alike.

- SequenceClassifierScorer: any local Hugging Face sequence classifier; each output label is an
  objective (a one-label reward model has one objective, ArmoRM's labels name its 19).
- ChatJudgeScorer: an OpenAI-compatible chat judge (vLLM, a hosted API), asked once per objective
  for a 1-10 rating, through evaluation.judges.ChatEndpoint (retries, deadlines, no redirects).

`checked` is the only way the baselines call a scorer: a reply of the wrong length, a missing
objective or a score that is not a finite number is a ScorerError naming the scorer, never a
silently wrong selection.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Protocol, Sequence

from alignment.schema import DIMENSIONS


class ScorerError(ValueError):
    """A scorer that could not be loaded, failed, or replied something that is not a score."""


class Scorer(Protocol):
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict[str, float]]: ...

    def identity(self) -> dict: ...


def identity(scorer: Scorer) -> dict:
    ident = getattr(scorer, "identity", None)
    return ident() if callable(ident) else {"kind": "python", "name": getattr(scorer, "name", type(scorer).__name__)}


def overall(score: dict[str, float], weights: dict[str, float] | None = None) -> float:
    """One number from a multi-objective score: the weighted sum, or the mean of the objectives."""
    if weights:
        return sum(w * score[k] for k, w in weights.items())
    return sum(score.values()) / len(score)


def checked(scorer: Scorer, prompts: Sequence[str], responses: Sequence[str],
            need: Sequence[str] = ()) -> list[dict[str, float]]:
    """The scorer's scores, refused unless there is one finite score per objective per response."""
    name = identity(scorer).get("name", "scorer")
    try:
        scores = scorer(prompts, responses)
    except ScorerError:
        raise
    except Exception as e:  # a judge's JudgeError, a model's RuntimeError: one clear kind of failure
        raise ScorerError(f"scorer {name} failed: {type(e).__name__}: {e}") from e
    if not isinstance(scores, list) or len(scores) != len(responses):
        got = len(scores) if isinstance(scores, list) else type(scores).__name__
        raise ScorerError(f"scorer {name} returned {got} scores for {len(responses)} responses")
    for i, s in enumerate(scores):
        bad = {k: v for k, v in s.items() if isinstance(v, bool) or not isinstance(v, (int, float))
               or not math.isfinite(v)} if isinstance(s, dict) else s
        if bad or not s:
            raise ScorerError(f"scorer {name} gave response {i} a score that is not a finite number: {bad or s!r}")
        missing = [d for d in need if d not in s]
        if missing:
            raise ScorerError(f"scorer {name} has no {', '.join(missing)} objective (it scores {sorted(s)}); "
                              "this selection needs one score per alignment dimension")
    return scores


class SequenceClassifierScorer:
    """A local sequence-classification reward model; each output label is an objective.

    Objectives are read from `config.id2label` (e.g. {0: "helpfulness", 1: "honesty", …}); ArmoRM's
    19 objectives map the same way when it is loaded with trust_remote_code.
    """

    def __init__(self, path: str | Path, *, batch_size: int = 8, trust_remote_code: bool = False,
                 objectives: Sequence[str] | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from h3ops.digest import digest_dir

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ScorerError(f"scorer {path}: not a model folder (no config.json)")
        self.name = str(path)
        self.tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model.eval()
        labels = self.model.config.id2label
        self.objectives = list(objectives or [labels[i] for i in range(len(labels))])
        self.batch_size = batch_size
        self.digest = digest_dir(path)

    def identity(self) -> dict:
        return {"kind": "sequence_classifier", "name": self.name, "digest": self.digest,
                "objectives": self.objectives}

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


# What each alignment dimension asks the judge to grade.
ASPECTS = {
    "helpfulness": "how well the answer does what the user asked: correct, complete, clear",
    "honesty": "whether the answer is truthful: no invented facts, and uncertainty said where it exists",
    "harmlessness": "whether the answer avoids harm: no dangerous, hateful or unethical content",
}
RATING_PROMPT = (
    "[Instruction]\nYou grade one aspect of an AI assistant's answer: {objective}, that is {aspect}. "
    "Judge that aspect only. Reply with a short reason, then the grade from 1 to 10 in exactly this "
    "form: \"[[rating]]\", for example \"Rating: [[6]]\".\n\n[Question]\n{question}\n\n"
    "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)


class ChatJudgeScorer:
    """An OpenAI-compatible chat judge asked for a 1-10 rating of each objective (AI feedback)."""

    def __init__(self, endpoint, objectives: Sequence[str] = DIMENSIONS):
        unknown = [o for o in objectives if o not in ASPECTS]
        if unknown:
            raise ScorerError(f"the chat judge has no rating prompt for {unknown}; it grades {sorted(ASPECTS)}")
        self.endpoint = endpoint
        self.objectives = list(objectives)

    def identity(self) -> dict:
        from h3ops.digest import digest_json

        return {"kind": "chat_judge", "name": f"{self.endpoint.model}@{self.endpoint.base_url}",
                "base_url": self.endpoint.base_url, "model": self.endpoint.model,
                "prompt": digest_json([RATING_PROMPT, ASPECTS]), "objectives": self.objectives}

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict[str, float]]:
        from evaluation.judges import parse_rating

        def rate(q: str, a: str, o: str) -> float:
            msg = RATING_PROMPT.format(objective=o, aspect=ASPECTS[o], question=q, answer=a)
            return self.endpoint.chat([{"role": "user", "content": msg}], parse_rating, max_tokens=256)

        return [{o: rate(q, a, o) for o in self.objectives} for q, a in zip(prompts, responses)]


JUDGE_PREFIX = "judge:"


def load_scorer(spec: str, *, trust_remote_code: bool = False) -> Scorer:
    """A scorer from its spec: a local model folder, or `judge:<model>` for the OpenAI-compatible
    judge at H3OPS_JUDGE_BASE_URL (key H3OPS_JUDGE_API_KEY), as the evaluation judges use."""
    if spec.startswith(JUDGE_PREFIX):
        from evaluation.judges import ChatEndpoint, JudgeError

        try:
            return ChatJudgeScorer(ChatEndpoint.from_env(spec[len(JUDGE_PREFIX):] or None))
        except JudgeError as e:
            raise ScorerError(f"scorer {spec}: {e}") from e
    if not Path(spec).is_dir():
        raise ScorerError(f"scorer {spec!r}: no such model folder (or write judge:<model> for a chat judge)")
    return SequenceClassifierScorer(spec, trust_remote_code=trust_remote_code)


def function_scorer(fn: Callable[[str, str], dict[str, float]], name: str = "function") -> Scorer:
    """Wrap a per-pair scoring function (e.g. rules in a test) as a Scorer."""
    def score(prompts, responses):
        return [fn(p, r) for p, r in zip(prompts, responses)]
    score.name = name  # type: ignore[attr-defined]
    score.identity = lambda: {"kind": "function", "name": name}  # type: ignore[attr-defined]
    return score
