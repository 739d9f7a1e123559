"""Conflict diagnostics: the statistics on constructed tensors, the Collector hook, `h3ops diagnose`."""
from __future__ import annotations

import json

import pytest
import torch

from h3ops.digest import digest_dir
from merging.diagnostics import (Collector, layer_type, pairwise_cosine, sign_conflict, summarize,
                                 tensor_diagnostics)
from merging.method import TensorTask, get_method


def test_sign_conflict_counts_disagreeing_entries_and_ignores_zeros():
    a = torch.tensor([1.0, -1.0, 0.0, 2.0, 0.0])
    b = torch.tensor([1.0, 1.0, 0.0, -1.0, -3.0])
    assert sign_conflict([a, b]) == pytest.approx(2 / 5)
    assert sign_conflict([a, a]) == 0.0


def test_cosine_and_layer_type():
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    cos = pairwise_cosine([x, y, -x])
    assert cos[0][1] == pytest.approx(0.0) and cos[0][2] == pytest.approx(-1.0) and cos[1][1] == 1.0
    assert layer_type("model.layers.17.mlp.up_proj.weight") == "model.layers.*.mlp.up_proj.weight"


def test_tensor_row_has_every_statistic_and_sti_vanishes_for_orthogonal_tasks():
    m, n, T, k = 30, 24, 3, 8
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(m, T * k, generator=g)).Q
    p = torch.linalg.qr(torch.randn(n, T * k, generator=g)).Q
    deltas = [q[:, t * k:(t + 1) * k] @ p[:, t * k:(t + 1) * k].T for t in range(T)]
    base = torch.zeros(m, n)
    row = tensor_diagnostics("model.layers.0.q.weight", base, [base + d for d in deltas])
    assert row["k_base"] == 8 and row["sti"] < 1e-4 and row["mean_cosine"] == pytest.approx(0.0, abs=1e-5)
    assert sum(row["alpha_t"]) == pytest.approx(1.0) and len(row["outlier_fraction"]) == 3
    g2 = torch.Generator().manual_seed(1)
    noisy = tensor_diagnostics("w", base, [torch.randn(m, n, generator=g2) for _ in range(T)])
    assert noisy["sti_rel"] > 0.1 and 0.5 < noisy["sign_conflict"] < 0.9
    vec = tensor_diagnostics("model.norm.weight", torch.zeros(5), [torch.ones(5), torch.zeros(5)])
    assert vec["zero_sparsity"] == [0.0, 1.0] and "sti" not in vec and "alpha_t" not in vec


def test_collector_folds_in_what_the_method_reported():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(20, 16, generator=g)
    cands = [base + 0.1 * torch.randn(20, 16, generator=g) for _ in range(2)]
    col = Collector("r_tsvm")
    m = get_method("r_tsvm")
    gp, mp = m.resolve({}, [{}, {}])
    for name in ("model.layers.0.w", "model.layers.1.w"):
        m.fn(TensorTask(name, base, cands, gp, mp, state={"diagnostics": col.sink}))
        col.observe(name, base, cands)
    assert not col.sink and len(col.rows) == 2
    assert col.rows[0]["method"]["k_base"] == 8 and "sti_rel" in col.rows[0]["method"]
    rep = col.report([{"uri": "x", "digest": "sha256:0"}])
    assert rep["summary"]["model.layers.*.w"]["tensors"] == 2
    assert summarize(col.rows)["model.layers.*.w"]["alpha_t"] == pytest.approx(rep["summary"]["model.layers.*.w"]["alpha_t"])


def test_h3ops_diagnose_writes_a_report_with_lineage(tiny_base, tiny_candidates, tmp_path, capsys):
    from merging.cli import main
    from merging.io import CheckpointReader

    out = tmp_path / "diag.json"
    rc = main(["diagnose", str(tiny_base), *map(str, tiny_candidates), "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "layer type" in printed and "self_attn.q_proj" in printed
    rep = json.loads(out.read_text())
    assert [i["digest"] for i in rep["inputs"]] == [digest_dir(p) for p in [tiny_base, *tiny_candidates]]
    assert rep["inputs"][0]["role"] == "base"
    names = {r["name"] for r in rep["tensors"]}
    assert names == set(CheckpointReader(tiny_base).names())
    q = next(r for r in rep["tensors"] if r["name"].endswith("layers.0.self_attn.q_proj.weight"))
    assert q["k_base"] == 64 // 3 and len(q["alpha_t"]) == 3 and q["sti"] > 0
    assert 0.5 < q["sign_conflict"] < 0.9  # independent random deltas


def test_diagnose_refuses_mismatched_inputs_and_writes_nothing(tiny_base, tmp_path, capsys):
    from h3ops.testing import make_tiny_llama
    from merging.diagnostics import main

    other = make_tiny_llama(tmp_path / "wider", hidden=32, heads=2)
    out = tmp_path / "diag.json"
    assert main([str(tiny_base), str(other), "--json", str(out)]) == 2
    assert "shape" in capsys.readouterr().err and not out.exists()
    assert main([str(tiny_base), str(tmp_path / "missing"), "--json", str(out)]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err and not out.exists()
