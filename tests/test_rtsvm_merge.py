"""`merge_method: r_tsvm` / `tsvm` through the real streaming engine on tiny checkpoints."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from h3ops.checkpoint import read_manifest, weight_files
from merging import MergeConfigError, merge
from merging.method import TensorTask, get_method


def _load(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in weight_files(folder):
        out.update(load_file(f))
    return out


def _cfg(method, base, cands, **params):
    return {"merge_method": method, "base_model": str(base), "models": [{"model": str(c)} for c in cands],
            "parameters": params}


@pytest.mark.parametrize("method,params", [("r_tsvm", {"beta": 0.2, "exclude_keys": ["*embed_tokens*"]}),
                                           ("tsvm", {"alpha": 0.5, "svd_driver": "gram"})])
def test_engine_merge_equals_the_method_applied_per_tensor(tiny_base, tiny_candidates, tmp_path, method, params):
    out = merge(_cfg(method, tiny_base, tiny_candidates, **params), tmp_path / "merged", seed=3, progress=False)
    m = read_manifest(out)
    assert (m.kind, m.method) == ("merged", method)
    recorded = m.parameters["global"]  # resolved: every option with its default is recorded
    assert {k: recorded[k] for k in params} == params and recorded["svd_driver"] == params.get("svd_driver", "exact")
    merged, base = _load(out), _load(tiny_base)
    cands = [_load(c) for c in tiny_candidates]
    assert set(merged) == set(base)
    meth = get_method(method)
    gp, mp = meth.resolve(params, [{}] * len(cands))
    for name in ("model.layers.1.mlp.down_proj.weight", "model.embed_tokens.weight", "model.norm.weight"):
        want = meth.fn(TensorTask(name, base[name].float(), [c[name].float() for c in cands], gp, mp, seed=3))
        assert torch.allclose(merged[name].float(), want, atol=1e-6), name
    emb = merged["model.embed_tokens.weight"].float() - base["model.embed_tokens.weight"].float()
    mean = sum(c["model.embed_tokens.weight"].float() for c in cands) / 3 - base["model.embed_tokens.weight"].float()
    if method == "r_tsvm":  # excluded: the mean task vector
        assert torch.allclose(emb, mean, atol=1e-6)


def test_bad_r_tsvm_option_fails_before_anything_is_written(tiny_base, tiny_candidates, tmp_path):
    out = tmp_path / "merged"
    with pytest.raises(MergeConfigError, match="linear_boost"):
        merge(_cfg("r_tsvm", tiny_base, tiny_candidates, rank_rule="linear_boost"), out, progress=False)
    assert not out.exists()
