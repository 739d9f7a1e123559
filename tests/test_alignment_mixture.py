"""Data-mixture baselines (Table 2): heuristic ratio, reward-model selection, Hummer-style conflict
selection; each writes a dataset with a digest that one DPO job trains on."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.dataset import build_dataset, load_dataset
from alignment.mixture import adc, build_mixture, conflicts, function_scorer, heuristic_mix, hummer_select


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def test_reward_model_selection_with_a_local_sequence_classifier(tiny_base, tmp_path):
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    from alignment.mixture import SequenceClassifierScorer, reward_select

    cfg = AutoConfig.from_pretrained(tiny_base)
    cfg.num_labels = 3
    cfg.id2label = {0: "helpfulness", 1: "honesty", 2: "harmlessness"}
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny_base).save_pretrained(tmp_path / "rm")
    scorer = SequenceClassifierScorer(tmp_path / "rm", batch_size=4)
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
