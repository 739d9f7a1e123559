"""The merge benchmark's plan (h3ops/merge_benchmark.yaml): every entry merges tiny real
checkpoints through the benchmark step, and no two entries give the same weights unless the plan
says the spec makes them equal. With empty parameters (what the DAG passed before) several
methods collapse into one another; this test is what catches that."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from h3ops.config import validate_config
from h3ops.steps.benchmark_plan import DEFAULT_PLAN, load_plan

DIMS = ["helpfulness", "honesty", "harmlessness"]
SAME = 1e-6  # max |difference| below which two merged models count as the same weights


def weights(folder: str | Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def identical_pairs(merged: dict[str, dict]) -> set[frozenset]:
    return {frozenset((x, y)) for x, y in itertools.combinations(sorted(merged), 2)
            if max_diff(merged[x], merged[y]) <= SAME}


@pytest.fixture
def cfg(tmp_path):
    return validate_config({"project": "bench", "base_model": "tiny", "workdir": str(tmp_path / "work"),
                            "dimensions": [{"name": d, "landing": str(tmp_path / d)} for d in DIMS]})


@pytest.mark.usefixtures("one_torch_thread")
def test_every_benchmark_entry_gives_different_weights(cfg, tiny_base, tiny_candidates):
    from h3ops.steps.benchmark import benchmark_merge, merge_methods

    entries = merge_methods(cfg)
    plan = load_plan()
    assert [e["label"] for e in entries] == [e.label for e in plan.entries]
    cands = [{"uri": str(c), "dimension": d} for c, d in zip(tiny_candidates, DIMS)]
    merged = {}
    for e in entries:
        out = benchmark_merge(cfg, e, str(tiny_base), cands)
        assert out["label"] == e["label"] and out["benchmark_version"] == plan.version
        merged[e["label"]] = weights(out["path"])
    base = weights(tiny_base)
    assert all(max_diff(m, base) > SAME for m in merged.values())  # every merge moved the base
    allowed = {frozenset(p) for p in plan.equal_by_spec}
    assert identical_pairs(merged) == allowed
    # the detector is real: with empty parameters (mergekit defaults) methods collapse
    defaults = {m: weights(benchmark_merge(cfg, {"label": m, "method": m, "parameters": {}, "version": 0},
                                           str(tiny_base), cands)["path"])
                for m in ("task_arithmetic", "dare_linear", "della_linear", "breadcrumbs")}
    assert frozenset(("task_arithmetic", "dare_linear")) in identical_pairs(defaults)


def test_rewarded_soup_weights_follow_the_dimension(cfg, tiny_base, tiny_candidates):
    from h3ops.steps.benchmark import benchmark_merge

    entry = next(e for e in load_plan().expanded() if e["method"] == "rewarded_soup")
    fwd = [{"uri": str(c), "dimension": d} for c, d in zip(tiny_candidates, DIMS)]
    a = weights(benchmark_merge(cfg, entry, str(tiny_base), fwd)["path"])
    b = weights(benchmark_merge(cfg, entry, str(tiny_base), fwd[::-1])["path"])
    assert max_diff(a, b) <= SAME  # same weights whatever order the candidates come in
    c = [weights(x) for x in tiny_candidates]
    w = [entry["weights_by_dimension"][d] for d in DIMS]
    k = "model.layers.0.mlp.up_proj.weight"
    expect = sum(wi * ci[k] for wi, ci in zip(w, c)) / sum(w)
    assert torch.allclose(a[k], expect, atol=1e-6)


def test_plan_sweep_and_selection():
    plan = load_plan()
    swept = plan.expanded(sweep=True)
    labels = [e["label"] for e in swept]
    assert len(labels) == len(set(labels)) > len(plan.entries)
    assert "ties@density=0.5" in labels
    assert next(e for e in swept if e["label"] == "ties@density=0.5")["parameters"]["density"] == 0.5
    assert [e["label"] for e in plan.entries_for(["tsvm", "dare_linear"])] == ["dare", "tsvm"]
    with pytest.raises(ValueError, match=r"unknown benchmark method\(s\) \['nope'\]"):
        plan.entries_for(["nope"])


@pytest.mark.parametrize("text, message", [
    ("version: 1\nentries:\n  - {label: x, method: ties, parameters: {densty: 0.2}}\n",
     r"entry 'x': merge_method ties: unknown parameter\(s\) \['densty'\]"),
    ("version: 1\nentries:\n  - {label: x, method: della, parameters: {density: 0.1, epsilon: 0.2}}\n",
     "entry 'x': merge_method della, models.0.: needs 0 < density - epsilon"),
    ("version: 1\nentries:\n  - {label: x, method: dare_linear, parameters: {density: 0.5}, sweep: {density: [0]}}\n",
     r"entry 'x@density=0'"),
    ("version: 1\nentries:\n  - {label: x, method: tiess}\n", "entry 'x': unknown merge method 'tiess'"),
    ("version: 1\nentries:\n  - {label: x, method: ties}\n  - {label: x, method: tsvm}\n", "duplicate labels"),
    ("version: 1\nentries:\n  - {label: x, method: ties, lambda: 2}\n", r"entries.0.lambda: Extra inputs"),
    ("version: 1\nentries: []\nequal_by_spec: [[a, b]]\n", "entries: List should have at least 1 item"),
])
def test_bad_plans_are_refused_naming_file_and_entry(tmp_path, text, message):
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_plan(path)
    assert str(path) in str(err.value)


def test_packaged_plan_is_versioned_and_found():
    assert DEFAULT_PLAN.is_file() and load_plan().version >= 1


def test_best_heuristic_ratio_is_kept_and_other_rows_stay():
    from h3ops.steps.benchmark import best_per_baseline

    rows = [{"label": "ties", "role": "merged", "avg": 50.0},
            {"label": "heuristic@ratio=0.2", "role": "mixture", "avg": 40.0},
            {"label": "heuristic@ratio=0.1", "role": "mixture", "avg": 45.0},
            {"label": "heuristic@ratio=0.05", "role": "mixture", "avg": 41.0},
            {"label": "hummer", "role": "mixture", "avg": 30.0}]
    kept = best_per_baseline(rows)
    assert [r["label"] for r in kept] == ["ties", "heuristic@ratio=0.1", "hummer"]


def _mixture_inputs(tmp_path: Path):
    """A pipeline config and two ingested datasets (20 helpfulness, 10 honesty pairs)."""
    import json

    from alignment.dataset import build_dataset

    cfg = validate_config({
        "project": f"mix{tmp_path.name[-6:]}".replace("_", ""), "base_model": "tiny",
        "workdir": str(tmp_path / "work"), "dpo": {"preset": "test", "overrides": {"max_steps": 2}},
        "registry": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "artifact_location": str(tmp_path / "art")},
        "dimensions": [{"name": d, "landing": str(tmp_path / d)} for d in ("helpfulness", "honesty")]})
    datasets = []
    for dim, n in (("helpfulness", 20), ("honesty", 10)):
        src = tmp_path / f"{dim}.jsonl"
        src.write_text("".join(json.dumps({"prompt": f"{dim} question {i}?", "chosen": f"Answer {i}.",
                                           "rejected": "No.", "dimension": dim, "source": "t"}) + "\n"
                               for i in range(n)))
        ref = build_dataset([src], tmp_path / "ds" / dim, dimension=dim, eval_holdout=0)
        datasets.append({"dimension": dim, "uri": ref.uri, "digest": ref.digest})
    return cfg, datasets


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_heuristic_mixture_is_built_trained_and_registered(tmp_path, tiny_base):
    import json

    from h3ops.checkpoint import Manifest
    from h3ops.steps.mixture import mixture_runs, train_mixture
    from h3ops.steps.register import register

    cfg, datasets = _mixture_inputs(tmp_path)
    runs = mixture_runs(cfg)
    assert [r["label"] for r in runs] == ["heuristic@ratio=0.2", "heuristic@ratio=0.1", "heuristic@ratio=0.05"]
    assert len(mixture_runs(cfg, scorer="/some/reward-model")) == 5  # reward and hummer need a scorer
    run = runs[0]
    out = train_mixture(cfg, str(tiny_base), datasets, run)
    m = Manifest.read(out["path"])
    assert (m.kind, m.dimension) == ("mixture", "mixture")
    assert m.parameters["mixture"]["parameters"] == {"ratio": 0.2}
    mixed = json.loads((Path(out["path"]).parent / "data" / "dataset.json").read_text())
    assert mixed["rows"] == 20 + 4 and mixed["digest"] == out["data_digest"]  # all helpful + 1/5 as many
    assert train_mixture(cfg, str(tiny_base), datasets, run) == out  # a retried task finds its output
    ref = register(cfg, out["path"], kind="mixture", dimension="mixture", data_digest=out["data_digest"],
                   parents=[str(tiny_base)], method="heuristic", base=str(tiny_base))
    assert ref["name"] == f"{cfg.project}-mixture"


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_plans_reward_selection_samples_from_the_base_and_trains(tmp_path, tiny_base):
    """The DAG's train_mixture with a scorer: the plan's on-policy run samples from the common base."""
    import json

    from h3ops.checkpoint import Manifest
    from h3ops.digest import digest_dir
    from h3ops.steps.mixture import mixture_runs, train_mixture
    from h3ops.testing import make_tiny_reward_model

    cfg, datasets = _mixture_inputs(tmp_path)
    rm = make_tiny_reward_model(tmp_path / "rm", seed=4)
    [run] = [r for r in mixture_runs(cfg, scorer=str(rm)) if r["method"] == "reward"]
    assert run["parameters"] == {"rule": "on_policy", "samples": 5, "temperature": 0.8, "top_p": 0.95}
    run = {**run, "parameters": {**run["parameters"], "samples": 2, "max_new_tokens": 8}}
    out = train_mixture(cfg, str(tiny_base), datasets, run, scorer=str(rm))
    prov = json.loads((Path(out["path"]).parent / "data" / "dataset.json").read_text())["provenance"]
    assert prov["params"]["policy"]["digest"] == digest_dir(tiny_base)
    assert prov["params"]["scorer"]["digest"] == digest_dir(rm) and prov["params"]["counts"]["pairs"] > 0
    assert Manifest.read(out["path"]).kind == "mixture"
    with pytest.raises(ValueError, match="no such model folder"):
        train_mixture(cfg, str(tiny_base), datasets, run, scorer=str(tmp_path / "no-rm"))
