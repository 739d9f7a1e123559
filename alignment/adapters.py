"""Adapters from the native layouts of the paper's Table 1 datasets to the canonical pair row.

Each adapter is a small function registered by name with the columns that identify its layout and
the dimension Table 1 annotates it with. Column names follow the datasets as published on the Hub
(HelpSteer, py-dpo, distilabel-intel-orca-dpo-pairs, distilabel-capybara-dpo-7k-binarized,
UltraSafety, truthy-dpo, GRATH, UltraFeedback raw and binarized, PKU-SafeRLHF, Nectar, HH-RLHF).
A row the adapter cannot read raises AdapterFault naming the column; a row with no preference
(a tie) yields nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from alignment.schema import make_row
from alignment.sources import Record


class AdapterFault(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@dataclass
class Adapter:
    name: str
    dimension: str | None  # Table 1's annotation; None: rows carry their own
    columns: frozenset[str]  # all present ⇒ this layout
    convert: Callable[[Iterable[Record]], Iterator[tuple[int, dict | None, AdapterFault | None]]]


ADAPTERS: dict[str, Adapter] = {}


def _get(raw: dict, key: str, kind: type | tuple = str) -> Any:
    if key not in raw or raw[key] is None:
        raise AdapterFault(key, "missing")
    if not isinstance(raw[key], kind):
        raise AdapterFault(key, f"wrong type {type(raw[key]).__name__}")
    return raw[key]


def per_row(name: str, dimension: str | None, columns: Iterable[str]):
    """Register a function raw-row -> list of canonical rows."""
    def wrap(fn: Callable[[dict], list[dict]]):
        def convert(records):
            for rec in records:
                if rec.fault:
                    yield rec.line, None, AdapterFault("<line>", rec.fault)
                    continue
                if not isinstance(rec.data, dict):
                    yield rec.line, None, AdapterFault("<row>", "not a JSON object")
                    continue
                try:
                    for row in fn(rec.data):
                        yield rec.line, row, None
                except AdapterFault as f:
                    yield rec.line, None, f
        ADAPTERS[name] = Adapter(name, dimension, frozenset(columns), convert)
        return fn
    return wrap


def _last_assistant(messages: Any, field: str) -> tuple[list, str]:
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        raise AdapterFault(field, "expected a non-empty list of chat messages")
    *history, last = messages
    if last.get("role") != "assistant":
        raise AdapterFault(field, "last message is not the assistant's answer")
    return history, last.get("content")


def _with_system(system: Any, prompt: str) -> Any:
    if isinstance(system, str) and system.strip():
        return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    return prompt


@per_row("canonical", None, ("prompt", "chosen", "rejected"))
def canonical(raw: dict) -> list[dict]:
    return [raw]  # validated as is


@per_row("py_dpo", "helpfulness", ("prompt", "chosen", "rejected"))
def py_dpo(raw: dict) -> list[dict]:
    # jondurbin/py-dpo-v0.1: id, prompt, chosen, rejected
    return [make_row(_get(raw, "prompt"), _get(raw, "chosen"), _get(raw, "rejected"),
                     dimension=None, source="py-dpo", id=raw.get("id"))]


@per_row("truthy_dpo", "honesty", ("system", "prompt", "chosen", "rejected"))
def truthy_dpo(raw: dict) -> list[dict]:
    # jondurbin/truthy-dpo-v0.1: id, source, system, prompt, chosen, rejected
    prompt = _with_system(raw.get("system"), _get(raw, "prompt"))
    return [make_row(prompt, _get(raw, "chosen"), _get(raw, "rejected"), dimension=None,
                     source="truthy-dpo", id=raw.get("id"))]


@per_row("grath", "honesty", ("question", "correct_answer", "incorrect_answer"))
def grath(raw: dict) -> list[dict]:
    # GRATH self-generated pairs: a question with its truthful and untruthful answer
    return [make_row(_get(raw, "question"), _get(raw, "correct_answer"), _get(raw, "incorrect_answer"),
                     dimension=None, source="grath")]


@per_row("distilabel_orca", "helpfulness", ("system", "input", "chosen", "rejected", "status"))
def distilabel_orca(raw: dict) -> list[dict]:
    # argilla/distilabel-intel-orca-dpo-pairs: ties carry no preference
    if raw.get("status") == "tie":
        return []
    prompt = _with_system(raw.get("system"), _get(raw, "input"))
    return [make_row(prompt, _get(raw, "chosen"), _get(raw, "rejected"), dimension=None,
                     source="distilabel-orca", meta={"rating": raw.get("rating")})]


@per_row("distilabel_capybara", "helpfulness", ("chosen", "rejected", "chosen_rating", "rejected_rating"))
def distilabel_capybara(raw: dict) -> list[dict]:
    # argilla/distilabel-capybara-dpo-7k-binarized: chosen/rejected are whole conversations
    history, chosen = _last_assistant(_get(raw, "chosen", list), "chosen")
    history_r, rejected = _last_assistant(_get(raw, "rejected", list), "rejected")
    if history != history_r:
        raise AdapterFault("rejected", "conversation differs from chosen before the last answer")
    return [make_row(history, chosen, rejected, dimension=None, source="distilabel-capybara",
                     meta={"chosen_rating": raw.get("chosen_rating"),
                           "rejected_rating": raw.get("rejected_rating")})]


@per_row("ultrafeedback_binarized", "helpfulness&honesty", ("prompt", "chosen", "rejected", "score_chosen"))
def ultrafeedback_binarized(raw: dict) -> list[dict]:
    # HuggingFaceH4/ultrafeedback_binarized: message lists plus scores
    history, chosen = _last_assistant(_get(raw, "chosen", list), "chosen")
    _, rejected = _last_assistant(_get(raw, "rejected", list), "rejected")
    return [make_row(history or _get(raw, "prompt"), chosen, rejected, dimension=None,
                     source="ultrafeedback", id=raw.get("prompt_id"))]


def _rating(annotation: Any) -> float | None:
    """UltraFeedback/UltraSafety annotations: {"Rating": "4", …} or a list of them; "N/A" → None."""
    if isinstance(annotation, list):
        vals = [v for v in map(_rating, annotation) if v is not None]
        return sum(vals) / len(vals) if vals else None
    if isinstance(annotation, dict):
        annotation = annotation.get("Rating")
    try:
        return float(annotation)
    except (TypeError, ValueError):
        return None


def _best_vs_worst(raw: dict, prompt_key: str, aspects: tuple[str, ...], source: str) -> list[dict]:
    prompt = _get(raw, prompt_key)
    completions = _get(raw, "completions", list)
    scored = []
    for i, c in enumerate(completions):
        if not isinstance(c, dict) or not isinstance(c.get("response"), str):
            raise AdapterFault(f"completions[{i}].response", "missing")
        ann = c.get("annotations") or {}
        vals = [v for v in (_rating(ann.get(a)) for a in aspects) if v is not None]
        if vals:
            scored.append((sum(vals) / len(vals), i, c["response"]))
    if len(scored) < 2:
        raise AdapterFault("completions", f"fewer than two completions rated on {'/'.join(aspects)}")
    scored.sort(key=lambda t: (-t[0], t[1]))
    (hi, _, best), (lo, _, worst) = scored[0], scored[-1]
    if hi == lo:
        return []
    return [make_row(prompt, best, worst, dimension=None, source=source, meta={"chosen_score": hi, "rejected_score": lo})]


@per_row("ultrafeedback", "helpfulness&honesty", ("instruction", "completions", "models"))
def ultrafeedback(raw: dict) -> list[dict]:
    # openbmb/UltraFeedback: 4 completions, each rated per aspect; best vs worst on helpfulness+honesty
    return _best_vs_worst(raw, "instruction", ("helpfulness", "honesty"), "ultrafeedback")


@per_row("ultrasafety", "harmlessness", ("prompt", "instruction", "completions", "models"))
def ultrasafety(raw: dict) -> list[dict]:
    # openbmb/UltraSafety: jailbreak prompt + completions rated on harmlessness
    return _best_vs_worst(raw, "prompt", ("harmlessness",), "ultrasafety")


@per_row("pku_saferlhf", "helpfulness&harmlessness",
         ("prompt", "response_0", "response_1", "better_response_id", "safer_response_id"))
def pku_saferlhf(raw: dict) -> list[dict]:
    # PKU-Alignment/PKU-SafeRLHF: when exactly one answer is safe it wins (harmlessness first);
    # otherwise the more helpful ("better") one wins.
    r = [_get(raw, "response_0"), _get(raw, "response_1")]
    better, safer = (_get(raw, k, int) for k in ("better_response_id", "safer_response_id"))
    if better not in (0, 1) or safer not in (0, 1):
        raise AdapterFault("better_response_id", "expected 0 or 1")
    safe = [raw.get("is_response_0_safe"), raw.get("is_response_1_safe")]
    win = safer if (isinstance(safe[0], bool) and safe[0] != safe[1]) else better
    return [make_row(_get(raw, "prompt"), r[win], r[1 - win], dimension=None, source="pku-saferlhf",
                     meta={"better": better, "safer": safer})]


def _hh_split(text: str, field: str) -> tuple[str, str]:
    marker = "\n\nAssistant:"
    cut = text.rfind(marker)
    if cut < 0:
        raise AdapterFault(field, "no '\\n\\nAssistant:' turn")
    return text[:cut + len(marker)], text[cut + len(marker):].strip()


@per_row("hh_rlhf", None, ("chosen", "rejected"))
def hh_rlhf(raw: dict) -> list[dict]:
    # Anthropic/hh-rlhf: two whole transcripts that share everything but the last answer
    p, chosen = _hh_split(_get(raw, "chosen"), "chosen")
    p2, rejected = _hh_split(_get(raw, "rejected"), "rejected")
    if p != p2:
        raise AdapterFault("rejected", "transcript differs from chosen before the last answer")
    return [make_row(p, chosen, rejected, dimension=None, source="hh-rlhf")]


@per_row("nectar", "helpfulness&harmlessness", ("prompt", "answers", "num_responses"))
def nectar(raw: dict) -> list[dict]:
    # berkeley-nest/Nectar: 7 answers ranked 1 (best) .. 7; pair the best with the worst
    answers = _get(raw, "answers", list)
    ranked = []
    for i, a in enumerate(answers):
        if not isinstance(a, dict) or not isinstance(a.get("answer"), str) or not isinstance(a.get("rank"), (int, float)):
            raise AdapterFault(f"answers[{i}]", "expected {answer: str, rank: number}")
        ranked.append((a["rank"], i, a["answer"]))
    if len(ranked) < 2:
        raise AdapterFault("answers", "fewer than two ranked answers")
    ranked.sort()
    return [make_row(_get(raw, "prompt"), ranked[0][2], ranked[-1][2], dimension=None, source="nectar",
                     meta={"ranks": [ranked[0][0], ranked[-1][0]]})]


def _helpsteer(records: Iterable[Record]):
    # nvidia/HelpSteer: one response per row with 0-4 attribute scores; pairs are built per prompt
    # from the most and least helpful responses (correctness breaks ties).
    groups: dict[str, list[tuple[int, float, float, str]]] = {}
    for rec in records:
        if rec.fault or not isinstance(rec.data, dict):
            yield rec.line, None, AdapterFault("<line>", rec.fault or "not a JSON object")
            continue
        try:
            prompt, response = _get(rec.data, "prompt"), _get(rec.data, "response")
            helpful = float(_get(rec.data, "helpfulness", (int, float)))
            correct = float(rec.data.get("correctness") or 0)
        except AdapterFault as f:
            yield rec.line, None, f
            continue
        groups.setdefault(prompt, []).append((rec.line, helpful, correct, response))
    for prompt, items in groups.items():
        items.sort(key=lambda t: (-t[1], -t[2], t[0]))
        best, worst = items[0], items[-1]
        if len(items) > 1 and (best[1], best[2]) != (worst[1], worst[2]):
            yield best[0], make_row(prompt, best[3], worst[3], dimension=None, source="helpsteer",
                                    meta={"helpfulness": [best[1], worst[1]]}), None


ADAPTERS["helpsteer"] = Adapter("helpsteer", "helpfulness",
                                frozenset(("prompt", "response", "helpfulness", "correctness")), _helpsteer)

# Most specific layouts first: py_dpo's and hh_rlhf's columns are subsets of others'.
_DETECT_ORDER = ("pku_saferlhf", "nectar", "helpsteer", "ultrasafety", "ultrafeedback",
                 "ultrafeedback_binarized", "distilabel_capybara", "distilabel_orca", "truthy_dpo", "grath",
                 "py_dpo", "hh_rlhf")


def detect(first: Any) -> Adapter:
    """The adapter whose columns the first row has."""
    if isinstance(first, dict):
        keys = set(first)
        # Our own rows say their dimension or source; py-dpo's rows (same three columns) do not.
        if {"prompt", "chosen", "rejected"} <= keys and keys & {"dimension", "source"} and "system" not in keys \
                and "score_chosen" not in keys and "chosen_rating" not in keys:
            return ADAPTERS["canonical"]
        for name in _DETECT_ORDER:
            if ADAPTERS[name].columns <= keys:
                return ADAPTERS[name]
        raise AdapterFault("<layout>", f"columns {sorted(keys)} match no known layout "
                           f"({', '.join(sorted(ADAPTERS))}); pass format= explicitly")
    raise AdapterFault("<layout>", "first row is not a JSON object")


def get_adapter(name: str) -> Adapter:
    if name not in ADAPTERS:
        raise ValueError(f"unknown format {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name]
