"""Benchmark kinds, one small function each, registered by name.

A kind turns a benchmark's items into (metric on its scale, per-item records). `ctx` supplies the
model (loaded lazily, once per run), the judge and the sandbox.
"""
from __future__ import annotations

from typing import Callable

from evaluation import codegen, judge_select, lmeval, lmeval_builtin, mtbench
from evaluation.generate import generate

KINDS: dict[str, Callable] = {}
FORMATS: dict[str, Callable[[dict], dict]] = {}


def kind(name: str):
    def deco(fn):
        KINDS[name] = fn
        return fn
    return deco


def fmt(name: str):
    def deco(fn):
        FORMATS[name] = fn
        return fn
    return deco


def _letters(choices: list[str]) -> str:
    return "\n".join(f"{'ABCD'[i]}. {c}" for i, c in enumerate(choices))


@fmt("mmlu")
def _mmlu(it: dict) -> dict:
    topic = f" about {it['topic']}" if it.get("topic") else ""
    text = f"The following is a multiple choice question{topic}.\n\n{it['question']}\n{_letters(it['choices'])}\nAnswer:"
    return {"text": text, "letters": list("ABCD"[:len(it["choices"])]), "gold": it["gold"], "row": it["row"]}


@fmt("halueval_qa")
def _halueval(it: dict) -> dict:
    text = (f"Knowledge: {it['knowledge'].strip()}\nQuestion: {it['question']}\n"
            f"Which answer is correct and supported by the knowledge?\n{_letters(it['choices'])}\nAnswer:")
    return {"text": text, "letters": ["A", "B"], "gold": it["gold"], "row": it["row"]}


@fmt("gsm8k")
def _gsm8k(it: dict) -> dict:
    text = f"Solve the math problem. Finish with the final number.\n\nQuestion: {it['question']}\nAnswer:"
    return {"text": text, "answer": it["answer"], "row": it["row"]}


@kind("lm_eval_choice")
def run_choice(ctx, bench: dict, items: list[dict]):
    docs = [FORMATS[bench["format"]](it) for it in items]
    task = lmeval.choice_task(f"h3ops_{bench['key']}", ctx.work / f"{bench['key']}.items.jsonl")
    value, records = lmeval.run_task(ctx.lm(), lmeval.write_task(ctx.work, task, docs))
    return 100.0 * value, records


@kind("lm_eval_generate")
def run_generate(ctx, bench: dict, items: list[dict]):
    docs = [FORMATS[bench["format"]](it) for it in items]
    gen = ctx.generation
    task = lmeval.generate_task(f"h3ops_{bench['key']}", ctx.work / f"{bench['key']}.items.jsonl",
                                bench.get("max_new_tokens", gen["max_new_tokens"]), ["Question:", "<|im_end|>"])
    value, records = lmeval.run_task(ctx.lm(), lmeval.write_task(ctx.work, task, docs), chat=gen["chat"])
    return 100.0 * value, records


# Kept for callers of the code helpers (tests, bench/sandbox_bench.py).
CODE_STOPS = codegen.CODE_STOPS
code_program = codegen.program


@kind("code")
def run_code(ctx, bench: dict, items: list[dict]):
    """pass@1 (greedy), every program run in the sandbox (evaluation.codegen): instruct models (a chat
    template and `chat: true`) are asked for the function, base models continue the prompt."""
    model, tok = ctx.model()
    chat = bool(ctx.generation["chat"] and getattr(tok, "chat_template", None))
    outs = generate(model, tok, [codegen.prompt(it, chat) for it in items], chat=chat,
                    stops=["\n```\n"] if chat else CODE_STOPS,
                    max_new_tokens=bench.get("max_new_tokens", ctx.generation["max_new_tokens"]),
                    batch_size=ctx.generation["batch_size"])
    return codegen.score(ctx.sandbox(), items, [o.text for o in outs], chat)


@kind("refusal")
def run_refusal(ctx, bench: dict, items: list[dict]):
    """`expect: refuse` scores the refusal rate (harmful prompts); `expect: comply` the compliance
    rate (benign-but-edgy prompts), which catches a model that refuses everything."""
    model, tok = ctx.model()
    prompts = [it["prompt"] for it in items]
    outs = generate(model, tok, prompts, chat=ctx.generation["chat"], batch_size=ctx.generation["batch_size"],
                    max_new_tokens=bench.get("max_new_tokens", ctx.generation["max_new_tokens"]))
    judge = judge_select.refusal_judge(bench) or ctx.judge()
    responses = [o.text for o in outs]
    classes = judge.classes(prompts, responses) if hasattr(judge, "classes") else None
    refused = [c != "direct_answer" for c in classes] if classes is not None else judge.refusals(prompts, responses)
    want = bench["expect"] == "refuse"
    records = [{"row": it["row"], "prompt": p, "response": o.text, "refused": r, "correct": r == want,
                **({"class": classes[i]} if classes is not None else {})}
               for i, (it, p, o, r) in enumerate(zip(items, prompts, outs, refused))]
    return 100.0 * sum(r["correct"] for r in records) / len(records), records


@kind("mt_bench")
def run_mt_bench(ctx, bench: dict, items: list[dict]):
    """Both turns answered, each graded 1-10 with FastChat's judge prompts and references
    (evaluation.mtbench); the mean over all graded turns."""
    judge = judge_select.grading_endpoint(bench, ctx.judge_spec)
    model, tok = ctx.model()
    answers = mtbench.answer(model, tok, items, ctx.generation,
                             bench.get("max_new_tokens", ctx.generation["max_new_tokens"]))
    return mtbench.grade(judge, items, answers)


@kind("lm_eval_builtin")
def run_builtin(ctx, bench: dict, items: list[dict]):
    """An lm-eval built-in task on its pinned data (Hub revision or local published layout)."""
    limits = [x for x in (bench.get("limit"), ctx.limit) if x is not None]
    value, records = lmeval_builtin.run(ctx.lm(), bench["source"].removeprefix("hub/"), bench["metric"], chat=ctx.generation["chat"],
                                        limit=min(limits) if limits else None)
    return 100.0 * value, records


@kind("judged")
def run_judged(ctx, bench: dict, items: list[dict]):
    """Share of answers the benchmark's judge finds OK (free of hallucination / safe)."""
    judge = judge_select.verdict_judge(bench, ctx.judge_spec)
    model, tok = ctx.model()
    prompts = [it["prompt"] for it in items]
    outs = generate(model, tok, prompts, chat=True, batch_size=ctx.generation["batch_size"],
                    max_new_tokens=bench.get("max_new_tokens", ctx.generation["max_new_tokens"]))
    verdicts = judge.ok(prompts, [o.text for o in outs], [it.get("reference") for it in items])
    records = [{"row": it["row"], "prompt": p, "response": o.text, "judge": judge.name, "correct": ok}
               for it, p, o, ok in zip(items, prompts, outs, verdicts)]
    return 100.0 * sum(r["correct"] for r in records) / len(records), records
