"""Data-mixture baselines (Table 2): heuristic ratio, reward-model selection, Hummer-style conflict
selection; each writes a dataset with a digest that one DPO job trains on.

The scored baselines run with real scorers: a tiny seeded sequence classifier (h3ops.testing) and
the scripted OpenAI-compatible judge process (tests/fixtures/full3h_judge.py). Every selection is
checked against scores this file computes itself (its own forward passes, the judge's rules)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.dataset import build_dataset, load_dataset
from alignment.mixture import adc, build_mixture, conflicts, heuristic_mix, hummer_select
from alignment.scorers import function_scorer


pytestmark = pytest.mark.usefixtures("one_torch_thread")
DIMS = ("helpfulness", "honesty", "harmlessness")


@pytest.fixture(scope="module")
def rm3(tmp_path_factory) -> Path:
    """A tiny reward model with one output per dimension."""
    from h3ops.testing import make_tiny_reward_model

    return make_tiny_reward_model(tmp_path_factory.mktemp("rm") / "rm3", labels=DIMS, seed=1)


@pytest.fixture(scope="module")
def rm1(tmp_path_factory) -> Path:
    """A tiny one-output reward model (a plain Bradley-Terry RM)."""
    from h3ops.testing import make_tiny_reward_model

    return make_tiny_reward_model(tmp_path_factory.mktemp("rm") / "rm1", seed=2)


def own_scores(rm: Path, prompt: str, answers: list[str]) -> list[list[float]]:
    """The classifier's scores computed here: one unpadded forward pass per answer, chat template."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm)
    model = AutoModelForSequenceClassification.from_pretrained(rm).eval()
    out = []
    for a in answers:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": a}],
                                       tokenize=False)
        with torch.no_grad():
            out.append(model(**tok(text, return_tensors="pt")).logits[0].tolist())
    return out


def rows(dim: str, n: int, tag: str = "") -> list[dict]:
    return [{"id": f"{dim}-{tag}{i}", "prompt": f"{dim} prompt {i}", "chosen": f"good {dim} {tag}{i}",
             "rejected": f"bad {dim} {tag}{i}", "dimension": dim, "source": "t"} for i in range(n)]


def make_ds(root: Path, dim: str, n: int) -> str:
    src = root / f"{dim}.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows(dim, n)))
    return build_dataset([src], root / f"ds-{dim}", dimension=dim, eval_holdout=0).uri


def test_heuristic_ratio(tmp_path):
    helpful, hon, harm = rows("helpfulness", 50), rows("honesty", 10), rows("harmlessness", 10)
    mixed = heuristic_mix(helpful, [hon, harm], ratio=0.1, seed=0)
    dims = [r["dimension"] for r in mixed]
    assert dims.count("helpfulness") == 50 and dims.count("honesty") + dims.count("harmlessness") == 5
    assert abs(dims.count("honesty") - dims.count("harmlessness")) <= 1
    assert heuristic_mix(helpful, [hon, harm], ratio=0.1, seed=0) == mixed  # seeded, reproducible
    assert heuristic_mix(helpful, [hon, harm], ratio=0.1, seed=1) != mixed
    short = heuristic_mix(helpful, [hon[:2], harm[:2]], ratio=0.2)  # too few: helpfulness shrinks
    assert [r["dimension"] for r in short].count("helpfulness") == 20 and len(short) == 24
    with pytest.raises(ValueError, match="ratio"):
        heuristic_mix(helpful, [hon], ratio=0)
    sources = {d: make_ds(tmp_path, d, n) for d, n in (("helpfulness", 40), ("honesty", 6), ("harmlessness", 6))}
    ref = build_mixture("heuristic", sources, tmp_path / "mix", ratio=0.05)
    again = build_mixture("heuristic", sources, tmp_path / "mix2", ratio=0.05)
    assert ref.dimension == "mixture" and ref.rows == 42 and again.digest == ref.digest
    meta = json.loads((tmp_path / "mix" / "dataset.json").read_text())
    assert meta["provenance"]["method"] == "heuristic" and set(meta["provenance"]["inputs"]) == set(sources)


def _keyword_judge(prompt: str, response: str) -> dict[str, float]:
    # honesty's judge likes "true", harmlessness's judge likes "safe", helpfulness's judge likes "good"
    return {"helpfulness": float("good" in response), "honesty": float("true" in response),
            "harmlessness": float("safe" in response)}


def test_hummer_selection_drops_the_worst_conflicts_until_adc_below_threshold():
    data = rows("helpfulness", 10) + rows("honesty", 10) + rows("harmlessness", 10)
    # 6 helpfulness pairs prefer an unsafe answer (conflict with harmlessness); 2 of them also untrue
    for i, r in enumerate(data[:6]):
        r["rejected"] += " safe" + (" true" if i < 2 else "")
    judge = function_scorer(_keyword_judge, "keywords")
    sev = conflicts(data, judge)
    assert sev[:6] == [2.0, 2.0, 1.0, 1.0, 1.0, 1.0] and sum(sev[6:]) == 0
    assert adc(sev) == pytest.approx(6 / 30)
    kept = hummer_select(data, judge, threshold=0.1)
    kept_ids = {r["id"] for r in kept}
    assert adc(conflicts(kept, judge)) <= 0.1
    assert all(r["id"] in kept_ids for r in data[6:])  # non-conflicting pairs all stay
    assert "helpfulness-0" not in kept_ids and "helpfulness-1" not in kept_ids  # the worst go first
    assert len(kept) == 24 + 2  # 2/26 <= 10% < 3/27
    assert len(hummer_select(data, judge, threshold=0.0)) == 24


def test_reward_model_selection_with_a_local_sequence_classifier(rm3):
    from alignment.mixture import reward_select
    from alignment.scorers import SequenceClassifierScorer

    scorer = SequenceClassifierScorer(rm3, batch_size=4)
    data = rows("helpfulness", 6) + rows("honesty", 6)
    s = scorer([r["prompt"] for r in data], [r["chosen"] for r in data])
    assert set(s[0]) == {"helpfulness", "honesty", "harmlessness"} and len(s) == 12
    margins = [sum(c.values()) / 3 - sum(j.values()) / 3 for c, j in
               zip(s, scorer([r["prompt"] for r in data], [r["rejected"] for r in data]))]
    kept = reward_select(data, scorer, rule="top_fraction", keep=0.25)
    expected = sorted((m for m in margins if m > 0), reverse=True)[:3]
    assert [r["meta"]["rm_margin"] for r in kept] == pytest.approx(expected, abs=1e-5)
    relabelled = reward_select(data, scorer, rule="relabel", min_margin=-1.0)
    assert len(relabelled) == sum(1 for m in margins if m != 0)
    assert all(r["meta"]["rm_margin"] > 0 for r in relabelled)
    flipped = [r for r in relabelled if r["id"].endswith("-relabelled")]
    assert len(flipped) == sum(1 for m in margins if m < 0) and all(r["chosen"].startswith("bad") for r in flipped)
    assert len(reward_select(data, scorer, rule="margin")) == sum(1 for m in margins if m > 0)


def test_mixture_cli_builds_and_trains_one_dpo_model(tiny_base, tmp_path, capsys):
    from alignment.cli import main
    from h3ops.checkpoint import Manifest

    sources = {d: make_ds(tmp_path, d, n) for d, n in (("helpfulness", 10), ("honesty", 4), ("harmlessness", 4))}
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking)  # artifacts (none are logged) stay under tmp_path
    client.create_experiment("h3ops-train", artifact_location=(tmp_path / "artifacts").as_uri())
    argv = ["mixture", "heuristic", *[a for d, p in sources.items() for a in ("--data", f"{d}={p}")],
            "--ratio", "0.2", "--out", str(tmp_path / "mix"), "--train-base", str(tiny_base),
            "--model-out", str(tmp_path / "model"), "--preset", "test", "--set", "max_steps=2",
            "--tracking-uri", tracking]
    assert main(argv) == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    m = Manifest.read(out["checkpoint"])
    assert (m.kind, m.dimension, m.parameters["mixture"]) == ("mixture", "mixture", "heuristic")
    assert m.data_digests == {"mixture": out["dataset"]["digest"]} and out["dataset"]["rows"] == 12
    assert load_dataset(tmp_path / "mix").dimension == "mixture"
    exp = client.get_experiment_by_name("h3ops-train")
    run = client.search_runs([exp.experiment_id])[0]
    assert run.data.tags["h3ops.dimension"] == "mixture" and "loss" in run.data.metrics
    assert [h.step for h in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    # bad usage is an error that names the problem
    assert main(["mixture", "reward", "--data", f"helpfulness={sources['helpfulness']}", "--out",
                 str(tmp_path / "m2")]) == 2
    assert "needs a scorer" in capsys.readouterr().err and not (tmp_path / "m2").exists()


def _sources(root: Path, n: int = 3) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    return {d: make_ds(root, d, n) for d in ("helpfulness", "honesty")}


def _prompts(sources: dict[str, str]) -> list[str]:
    """The prompts in the order build_mixture reads them: dimensions sorted, each dataset's rows by id."""
    rows = [r for d in sorted(sources) for r in load_dataset(sources[d]).train]
    return list(dict.fromkeys(r["prompt"] for r in rows))


def _expected_pairs(prompts: list[str], answers: list[list[str]], score) -> dict[str, tuple[str, str]]:
    """{prompt: (argmax, argmin)} over each prompt's distinct non-empty answers, first of equals wins;
    a prompt with one distinct answer or all scores equal has no pair."""
    out = {}
    for p, ans in zip(prompts, answers):
        distinct = list(dict.fromkeys(a for a in ans if a))
        s = score(p, distinct)
        if len(distinct) > 1 and max(s) != min(s):
            out[p] = (distinct[s.index(max(s))], distinct[s.index(min(s))])
    return out


def _provenance(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text())["provenance"]


ON_POLICY = {"rule": "on_policy", "samples": 4, "max_new_tokens": 16, "seed": 3}


def test_on_policy_reward_selection_keeps_the_classifiers_best_and_worst_answer(tiny_base, rm1, tmp_path):
    from alignment.onpolicy import sample
    from alignment.scorers import SequenceClassifierScorer
    from h3ops.digest import digest_dir

    sources = _sources(tmp_path)
    ref = build_mixture("reward", sources, tmp_path / "mix", scorer=SequenceClassifierScorer(rm1),
                        policy=tiny_base, **ON_POLICY)
    prompts = _prompts(sources)
    answers = sample(tiny_base, prompts, n=4, seed=3, max_new_tokens=16)
    assert all(len(set(a)) > 1 for a in answers)  # sampled, not greedy
    expected = _expected_pairs(prompts, answers, lambda p, ans: [s[0] for s in own_scores(rm1, p, ans)])
    ds = load_dataset(tmp_path / "mix")
    assert {r["prompt"]: (r["chosen"], r["rejected"]) for r in ds.train} == expected and len(expected) >= 4
    assert all(r["meta"]["rm_chosen"] > r["meta"]["rm_rejected"] for r in ds.train)
    # lineage: the scorer's identity, the policy and every setting; the digest names what was written
    prov = _provenance(tmp_path / "mix")
    assert prov["method"] == "reward" and prov["inputs"] == {d: load_dataset(s).digest for d, s in sources.items()}
    params = prov["params"]
    assert params["scorer"] == {"kind": "sequence_classifier", "name": str(rm1), "digest": digest_dir(rm1),
                                "objectives": ["reward"]}
    assert params["policy"] == {"path": str(tiny_base), "digest": digest_dir(tiny_base)}
    assert (params["rule"], params["samples"], params["temperature"], params["top_p"], params["seed"]) == \
        ("on_policy", 4, 0.8, 0.95, 3)
    assert params["counts"] == {"prompts": 6, "pairs": len(expected), "skipped": 6 - len(expected)}
    assert ref.digest == ds.digest
    again = build_mixture("reward", sources, tmp_path / "again", scorer=SequenceClassifierScorer(rm1),
                          policy=tiny_base, **ON_POLICY)
    assert again.digest == ref.digest  # seeded: the same answers, scores and pairs


def _conflict_rows() -> list[dict]:
    """Pairs whose answers carry RATE:n, the judge's rating of that answer on every dimension."""
    out = []
    for d, (c, r) in zip(DIMS * 3, [(7, 2), (3, 8), (5, 5), (2, 9), (6, 1), (4, 6), (8, 3), (1, 2), (9, 4)]):
        i = len(out)
        out.append({"id": f"{d}-{i}", "prompt": f"{d} question {i}", "chosen": f"RATE:{c} chosen {i}",
                    "rejected": f"RATE:{r} rejected {i}", "dimension": d, "source": "t"})
    return out


def _hummer_expected(rows: list[dict], sev: list[float], threshold: float) -> set[str]:
    conflicting = sorted((s, r["id"]) for r, s in zip(rows, sev) if s > 0)
    n_ok = len(rows) - len(conflicting)
    allowed = max(c for c in range(len(conflicting) + 1) if c <= threshold * (n_ok + c))
    return {r["id"] for r, s in zip(rows, sev) if s == 0} | {i for _, i in conflicting[:allowed]}


def _write_dims(root: Path, rows: list[dict]) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for d in DIMS:
        src = root / f"{d}.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows if r["dimension"] == d))
        out[d] = build_dataset([src], root / f"ds-{d}", dimension=d, eval_holdout=0).uri
    return out


def test_hummer_with_a_three_objective_classifier_drops_what_its_scores_say_conflicts(rm3, tmp_path):
    from alignment.scorers import SequenceClassifierScorer

    data = [r for d in DIMS for r in rows(d, 4)]
    sources = _write_dims(tmp_path, data)
    ref = build_mixture("hummer", sources, tmp_path / "mix", scorer=SequenceClassifierScorer(rm3), threshold=0.25)
    ordered = [r for d in sorted(sources) for r in load_dataset(sources[d]).train]
    sev = []
    for r in ordered:
        (c, j) = (dict(zip(DIMS, s)) for s in own_scores(rm3, r["prompt"], [r["chosen"], r["rejected"]]))
        sev.append(sum(max(0.0, j[d] - c[d]) for d in DIMS if d != r["dimension"]))
    assert 0 < adc(sev) < 1  # the random classifier makes some pairs conflict, not all
    kept = load_dataset(tmp_path / "mix").train
    assert {r["id"] for r in kept} == _hummer_expected(ordered, sev, 0.25)
    by_id = {r["id"]: s for r, s in zip(ordered, sev)}
    assert all(r["meta"]["conflict"] == pytest.approx(by_id[r["id"]], abs=1e-4) for r in kept)
    params = _provenance(tmp_path / "mix")["params"]
    assert params["adc_before"] == pytest.approx(adc(sev)) and params["adc_after"] <= 0.25
    assert params["scorer"]["kind"] == "sequence_classifier" and params["scorer"]["objectives"] == list(DIMS)
    assert ref.digest == load_dataset(tmp_path / "mix").digest


def test_a_chat_judge_process_scores_on_policy_and_hummer_selection(tiny_base, full3h_judge, monkeypatch, tmp_path):
    from alignment.onpolicy import sample
    from alignment.scorers import load_scorer
    from tests.fixtures.full3h_judge import rating

    monkeypatch.setenv("H3OPS_JUDGE_BASE_URL", full3h_judge.base_url)
    judge = load_scorer("judge:judge-7b")
    sources = _sources(tmp_path / "on")
    build_mixture("reward", sources, tmp_path / "on" / "mix", scorer=judge, policy=tiny_base,
                  **{**ON_POLICY, "max_new_tokens": 40})
    prompts = _prompts(sources)
    answers = sample(tiny_base, prompts, n=4, seed=3, max_new_tokens=40)
    expected = _expected_pairs(prompts, answers, lambda p, ans: [rating(a) for a in ans])
    ds = load_dataset(tmp_path / "on" / "mix")
    assert {r["prompt"]: (r["chosen"], r["rejected"]) for r in ds.train} == expected and expected
    asked = full3h_judge.requests()
    distinct = sum(len(set(a for a in ans if a)) for ans in answers)
    assert len(asked) == 3 * distinct and {q["model"] for q in asked} == {"judge-7b"}
    assert all(sum(f"grade one aspect of an AI assistant's answer: {d}," in q["messages"][0]["content"]
                   for q in asked) == distinct for d in DIMS)  # each answer graded once per dimension
    scorer_id = _provenance(tmp_path / "on" / "mix")["params"]["scorer"]
    assert scorer_id["kind"] == "chat_judge" and scorer_id["base_url"] == full3h_judge.base_url
    assert scorer_id["model"] == "judge-7b" and scorer_id["prompt"].startswith("sha256:")

    data = _conflict_rows()
    sources = _write_dims(tmp_path / "hu", data)
    build_mixture("hummer", sources, tmp_path / "hu" / "mix", scorer=judge, threshold=0.3)
    ordered = [r for d in sorted(sources) for r in load_dataset(sources[d]).train]
    # the judge rates an answer alike on every dimension: 2 other dimensions x how much worse chosen is
    sev = [2.0 * max(0, rating(r["rejected"]) - rating(r["chosen"])) for r in ordered]
    assert sorted(sev) == [0, 0, 0, 0, 0, 2, 4, 10, 14]
    kept = load_dataset(tmp_path / "hu" / "mix").train
    assert {r["id"] for r in kept} == _hummer_expected(ordered, sev, 0.3) and len(kept) == 7


def test_a_failing_or_garbled_scorer_is_a_clear_error_and_leaves_no_dataset(rm1, full3h_judge, monkeypatch, tmp_path):
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    from alignment.scorers import ChatJudgeScorer, ScorerError, SequenceClassifierScorer, load_scorer
    from evaluation.judges import ChatEndpoint
    from tests.fixtures.servers import free_port

    data = _conflict_rows()
    data[4]["rejected"] = "RATE:99 the judge answers [[99]], not a 1-10 rating"
    sources = _write_dims(tmp_path / "in", data)
    outs = tmp_path / "outs"
    outs.mkdir()

    def refused(scorer, match: str, method: str = "hummer", **kw) -> None:
        with pytest.raises(ScorerError, match=match):
            build_mixture(method, sources, outs / "mix", scorer=scorer, **kw)
        assert list(outs.iterdir()) == []  # no dataset, no staging file, nothing half-written

    fast = {"retries": 2, "backoff_s": 0.01, "timeout_s": 10}
    refused(ChatJudgeScorer(ChatEndpoint(full3h_judge.base_url, "j", **fast)),
            r"failed: JudgeError: judge at .* failed after 2 attempts: unparseable judge output: rating 99.0 outside 1-10")
    refused(ChatJudgeScorer(ChatEndpoint(f"http://127.0.0.1:{free_port()}/v1", "j", **fast)),
            r"failed: JudgeError: .*after 2 attempts: ConnectionRefusedError")
    # a reward model whose head is broken scores NaN
    nan_rm = tmp_path / "nan-rm"
    shutil.copytree(rm1, nan_rm)
    model = AutoModelForSequenceClassification.from_pretrained(nan_rm)
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    model.save_pretrained(nan_rm)
    refused(SequenceClassifierScorer(nan_rm), r"gave response 0 a score that is not a finite number: \{'reward': nan\}",
            method="reward", rule="top_fraction")
    # one overall score cannot say which dimension a pair works against
    refused(SequenceClassifierScorer(rm1), r"has no helpfulness, honesty, harmlessness objective .*scores \['reward'\]")
    monkeypatch.delenv("H3OPS_JUDGE_BASE_URL", raising=False)
    with pytest.raises(ScorerError, match="needs H3OPS_JUDGE_BASE_URL"):
        load_scorer("judge:j")
    with pytest.raises(ScorerError, match="no such model folder"):
        load_scorer(str(tmp_path / "missing"))
