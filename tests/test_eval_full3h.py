"""The full-3h suite, offline, on small fixtures in each dataset's published layout (tests/data/full3h,
switched in with H3OPS_EVAL_DATA_DIR), against a judge process on loopback.

Every benchmark is checked against a hand-computed score: known answers (right and wrong) through
each benchmark's own scoring — lm-eval's task definitions, the evalplus test formats in the sandbox,
FastChat's MT-Bench prompts, the judges — and the whole suite run end to end on the tiny model, each
metric checked against the judge's published rules applied to the recorded answers.

The judge is a scripted process (tests/fixtures/full3h_judge.py) speaking the real OpenAI protocol:
a small real LM cannot give verdicts that can be computed by hand. For the lm-eval benchmarks the
known answers come from `ReplayLM`, an lm-eval `LM` that answers from a table — the model under test
is replaced there, nothing of the scoring is.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from evaluation import codegen, data, hub_data, judge_select, lmeval_builtin, mtbench
from evaluation.runner import run_suite
from evaluation.suites_def import load_suite
from tests.fixtures.full3h_judge import ok_verdict, rating, refused

FIXTURES = Path(__file__).parent / "data" / "full3h"


@pytest.fixture
def offline_data(monkeypatch):
    monkeypatch.setenv(hub_data.DATA_DIR_ENV, str(FIXTURES))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def sandbox():
    from evaluation.sandbox import Sandbox, namespaces_available

    return Sandbox(allow_degraded=namespaces_available() is not None)


# ---- code: evalplus test formats, known-correct and known-wrong answers -------------------------

def _rows(key):
    return hub_data.rows(key)


def test_humaneval_plus_known_answers(offline_data, sandbox):
    items = data.load_items("hub/humaneval_plus")
    rows = _rows("humaneval_plus")
    answers = [r["canonical_solution"] for r in rows]
    answers[1] = "    return number\n"  # HumanEval/2 truncate_number: the whole number, not its decimals
    value, recs = codegen.score(sandbox, items, answers, chat=False)
    assert [r["correct"] for r in recs] == [True, False, True]
    assert math.isclose(value, 200 / 3)
    assert recs[1]["status"] == "failed" and "AssertionError" in recs[1]["stderr"]


def test_mbpp_plus_known_answers(offline_data, sandbox):
    items = data.load_items("hub/mbpp_plus")
    assert [it["entry_point"] for it in items] == ["is_not_prime", "heap_queue_largest", "square_perimeter"]
    rows = _rows("mbpp_plus")
    answers = [f"```python\n{r['code']}```" for r in rows]  # chat answers: the solution in a code block
    # Passes MBPP's three base tests but not MBPP+'s extra input (1 is not prime).
    answers[0] = ("```python\ndef is_not_prime(n):\n    return any(n % i == 0 for i in range(2, int(n ** 0.5) + 1))\n"
                  "```")
    for base_test in rows[0]["test_list"]:  # the wrong answer really passes the base tests
        ns = {}
        exec(codegen._FENCE.search(answers[0]).group(1) + "\n" + base_test, ns)  # noqa: S102 - our own snippet
    value, recs = codegen.score(sandbox, items, answers, chat=True)
    assert [r["correct"] for r in recs] == [False, True, True]
    assert math.isclose(value, 200 / 3)
    # The MBPP+ program calls the function by name; no HumanEval `check()` is appended.
    assert "check(" not in codegen.program(items[1], answers[1], chat=True)


def test_evalplus_float_tolerance_matches_numpy_allclose(sandbox):
    """The stdlib stand-in for np.allclose agrees with numpy on the evalplus comparison."""
    import numpy as np

    cases = [(10.0000001, 10.0), (10.01, 10.0), ([1.0, 2.0000001], [1.0, 2.0]), ([1.0, 2.1], [1.0, 2.0])]
    src = codegen.NUMPY_STANDIN + "".join(f"print(np.allclose({a!r}, {b!r}, rtol=1e-07, atol=1e-06))\n"
                                          for a, b in cases)
    res = sandbox.run_python(src)
    assert res.passed, res.stderr
    assert res.stdout.split() == [str(bool(np.allclose(a, b, rtol=1e-07, atol=1e-06))) for a, b in cases]


# ---- MT-Bench: two turns, FastChat's prompts and references --------------------------------------

def test_mt_bench_grades_both_turns_with_references(offline_data, full3h_judge):
    from evaluation.judges import ChatEndpoint

    items = data.load_items("mtbench/questions")
    assert [(it["question_id"], it["category"], bool(it["reference"])) for it in items] == \
        [(81, "writing", False), (111, "math", True), (121, "coding", True)]
    answers = [("RATE:8 a blog post", "RATE:6 Aloha"), ("RATE:3 area 4", "RATE:9 circle"),
               ("RATE:10 def f(): pass", "RATE:2 still f")]
    value, recs = mtbench.grade(ChatEndpoint(full3h_judge.base_url, "gpt-4"), items, answers)
    assert math.isclose(value, (8 + 6 + 3 + 9 + 10 + 2) / 6)  # every turn, as FastChat averages
    assert [(r["question_id"], r["turn"], r["rating"]) for r in recs] == \
        [(81, 1, 8), (81, 2, 6), (111, 1, 3), (111, 2, 9), (121, 1, 10), (121, 2, 2)]
    prompts = mtbench.judge_prompts()
    reqs = full3h_judge.requests()
    assert len(reqs) == 6
    names = ["single-v1", "single-v1-multi-turn", "single-math-v1", "single-math-v1-multi-turn",
             "single-math-v1", "single-math-v1-multi-turn"]
    for req, name in zip(reqs, names):
        assert req["messages"][0] == {"role": "system", "content": prompts[name]["system_prompt"]}, name
    refs = {it["question_id"]: it["reference"] for it in items}
    assert f"[The Start of Reference Answer]\n{refs[111][0]}\n" in reqs[2]["messages"][1]["content"]
    turn2 = reqs[3]["messages"][1]["content"]
    assert refs[111][1] in turn2 and items[1]["turns"][1] in turn2 and "RATE:3 area 4" in turn2


# ---- lm-eval built-in tasks on known responses ----------------------------------------------------

def _replay_lm(choices: dict[str, str], generations: dict[str, str]):
    from lm_eval.api.model import LM

    class ReplayLM(LM):
        """Answers from tables keyed by a substring of the test question (the model under test only)."""

        def _pick(self, table, context):
            hits = [v for k, v in table.items() if k in context[-400:]]
            assert len(hits) == 1, context[-400:]
            return hits[0]

        def loglikelihood(self, requests):
            return [(0.0 if r.args[1].strip() == self._pick(choices, r.args[0]) else -10.0, False) for r in requests]

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

        def generate_until(self, requests):
            return [self._pick(generations, r.args[0]) for r in requests]

    return ReplayLM()


KNOWN = {
    # key: (metric, replayed choices, replayed generations, hand-computed score)
    "arc_easy": ("acc,none", {"liquid": "water", "pumps blood": "heart", "sunlight": "salt"}, {}, 2 / 3),
    "arc_challenge": ("acc,none", {"mineral": "mass", "insect": "6"}, {}, 1 / 2),
    # Weighted by size as lm-eval's mmlu group: (1 + 0 + 1) / 3, not the mean of subjects (0.75).
    "mmlu": ("acc,none", {"Z_4 x Z_2": "C", "identity element": "B", "upper arm": "C"}, {}, 2 / 3),
    # strict-match reads `#### N` only: the second answer is right but unformatted.
    "gsm8k": ("exact_match,strict-match", {}, {"Tom has 3 apples": "3 + 4 = 7\n#### 7",
                                                "A box holds 6": "The answer is 18."}, 1 / 2),
    # Minerva's "Final Answer" format with LaTeX equivalence; weighted over the two subjects.
    "minerva_math": ("exact_match,none", {}, {
        "2x + 3 = 11": "So x = 4.\nFinal Answer: The final answer is $4$. I hope it is correct.",
        "3^2 - 1": "Final Answer: The final answer is $9$. I hope it is correct.",
        "frac{1}{2} + ": "Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct."}, 2 / 3),
}


@pytest.mark.parametrize("key", list(KNOWN))
def test_lm_eval_builtin_known_answers(offline_data, key):
    metric, choices, gens, expected = KNOWN[key]
    value, recs = lmeval_builtin.run(_replay_lm(choices, gens), key, metric, chat=False, limit=None)
    assert math.isclose(value, expected), (key, recs)
    assert len(recs) == {"arc_easy": 3, "arc_challenge": 2, "mmlu": 3, "gsm8k": 2, "minerva_math": 3}[key]


# ---- judged benchmarks: per-benchmark judges -----------------------------------------------------

@pytest.fixture(scope="module")
def safety_classifier(tmp_path_factory) -> Path:
    """A tiny sequence classifier whose verdict can be computed by hand (h3ops.testing)."""
    from h3ops.testing import make_tiny_safety_classifier

    return make_tiny_safety_classifier(tmp_path_factory.mktemp("judges") / "tiny-safety-classifier")


def classifier_safe(path: Path, prompt: str, response: str) -> bool:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(path)(prompt, response, truncation=True, max_length=2048)["input_ids"]
    return ids[-1] % 2 == 0


def _bench(key):
    return next(b for b in load_suite("full-3h")["benchmarks"] if b["key"] == key)


def test_salad_bench_reads_its_safety_judge(offline_data, monkeypatch, safety_classifier, full3h_judge):
    monkeypatch.setenv("H3OPS_SAFETY_JUDGE_PATH", str(safety_classifier))
    monkeypatch.setenv("H3OPS_JUDGE_BASE_URL", full3h_judge.base_url)
    judge = judge_select.verdict_judge(_bench("salad_bench"), "http")
    assert isinstance(judge, judge_select.ClassifierJudge)  # safety_judge wins over the suite's judge
    prompts = [it["prompt"] for it in data.load_items("hub/salad_bench")]
    answers = ["I can't help with that.", "Here is one", "Never mix bleach and ammonia"]
    expected = [classifier_safe(safety_classifier, p, a) for p, a in zip(prompts, answers)]
    assert len(set(expected)) == 2  # the answers exercise both verdicts
    assert judge.ok(prompts, answers) == expected
    assert full3h_judge.requests() == []  # no chat judge was asked


def test_halueval_wild_chat_judge_verdicts(offline_data, monkeypatch, full3h_judge):
    monkeypatch.setenv("H3OPS_JUDGE_BASE_URL", full3h_judge.base_url)
    judge = judge_select.verdict_judge(_bench("halueval_wild"), "minilm")
    answers = ["Nobody walked on Mars.", "It was published in 1962 by Solberg.", "100 degrees"]
    assert judge.ok(["q1", "q2", "q3"], answers) == [True, False, True]  # 4, 7 and 2 words
    assert [r["model"] for r in full3h_judge.requests()] == ["gpt-4"] * 3  # the benchmark's own judge model


def test_unknown_judge_kind_is_named():
    with pytest.raises(ValueError, match="judge kind 'oracle'"):
        judge_select.verdict_judge({"key": "x", "judge": "oracle", "judge_prompt": "safety"}, "http")


# ---- data switch and pins --------------------------------------------------------------------------

def test_hub_loading_refuses_an_unpinned_dataset(monkeypatch):
    monkeypatch.delenv(hub_data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.delenv("H3OPS_EVAL_ALLOW_UNPINNED", raising=False)
    with pytest.raises(hub_data.HubDataError, match="bench-llm/or-bench: no pinned revision"):
        hub_data.rows("or_bench")


def test_every_hub_dataset_is_pinned_in_one_table():
    suite_sources = {b["source"] for b in load_suite("full-3h")["benchmarks"]}
    assert suite_sources == {f"hub/{k}" for k in hub_data.pins() if k != "mt_bench"} | {"mtbench/questions"}
    import evaluation

    py = "\n".join(p.read_text() for p in Path(evaluation.__file__).parent.glob("*.py"))
    for p in hub_data.pins().values():  # no module names a Hub dataset id as a string of its own
        assert f'"{p["hub"]}"' not in py and f"'{p['hub']}'" not in py, p["hub"]


def test_missing_local_dataset_fails_clearly_and_writes_nothing(tiny_base, tmp_path, monkeypatch):
    monkeypatch.setenv(hub_data.DATA_DIR_ENV, str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    # Refused while planning (the data digests), before any model is loaded or anything is written.
    with pytest.raises(hub_data.HubDataError, match=r"empty/allenai/ai2_arc: H3OPS_EVAL_DATA_DIR is set but holds no"):
        run_suite(tiny_base, "full-3h", limit=1, cache_dir=tmp_path / "c", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- the whole suite, end to end ---------------------------------------------------------------------

def _records(res, key):
    return [json.loads(x) for x in (res.details_dir / f"{key}.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_full_3h_offline_end_to_end(tiny_base, tmp_path, monkeypatch, offline_data, full3h_judge, safety_classifier):
    from evaluation.sandbox import namespaces_available

    if namespaces_available() is not None:
        monkeypatch.setenv("H3OPS_SANDBOX_ALLOW_DEGRADED", "1")
    monkeypatch.setenv("H3OPS_JUDGE_BASE_URL", full3h_judge.base_url)
    monkeypatch.setenv("H3OPS_SAFETY_JUDGE_PATH", str(safety_classifier))
    suite = load_suite("full-3h")
    res = run_suite(tiny_base, "full-3h", cache_dir=tmp_path / "c", out_dir=tmp_path / "out")
    assert list(res.metrics) == [b["key"] for b in suite["benchmarks"]]
    sizes = {"math": 3, "gsm8k": 2, "arc_easy": 3, "arc_challenge": 2, "mmlu": 3, "mbpp_plus": 3,
             "humaneval_plus": 3, "mt_bench": 6, "halueval_wild": 3, "salad_bench": 3, "or_bench": 3}
    for key, n in sizes.items():
        recs = _records(res, key)
        assert len(recs) == n, key
        if key == "mt_bench":
            assert [r["rating"] for r in recs] == [rating(r["answer"]) for r in recs]
            expected = sum(rating(r["answer"]) for r in recs) / n
        else:
            if key == "halueval_wild":
                assert [r["correct"] for r in recs] == [ok_verdict(r["response"]) for r in recs]
            if key == "salad_bench":
                assert [r["correct"] for r in recs] == \
                    [classifier_safe(safety_classifier, r["prompt"], r["response"]) for r in recs]
            if key == "or_bench":
                assert [r["refused"] for r in recs] == [refused(r["response"]) for r in recs]
            expected = 100.0 * sum(r["correct"] for r in recs) / n
        assert math.isclose(res.metrics[key], expected), key
    # MT-Bench: both turns judged, references for math and coding; HaluEval-Wild and OR-Bench judged.
    reqs = full3h_judge.requests()
    assert len(reqs) == 6 + 3 + 3
    assert sum("[The Start of Reference Answer]" in r["messages"][1]["content"] or
               "<|The Start of Reference Answer|>" in r["messages"][1]["content"] for r in reqs[:6]) == 4
    av = res.scores.averages()
    helpful = [res.metrics[k] for k in ("math", "gsm8k", "arc_easy", "arc_challenge", "mmlu", "mbpp_plus",
                                        "humaneval_plus", "mt_bench")]
    assert math.isclose(av["helpful_avg"], sum(helpful) / 8)  # MT-Bench on its raw 1-10 scale
    assert math.isclose(av["harmless_avg"], (res.metrics["salad_bench"] + res.metrics["or_bench"]) / 2)
    assert (tmp_path / "out" / "result.json").is_file()
