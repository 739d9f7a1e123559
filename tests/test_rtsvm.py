"""R-TSVM (spec rtsvm.md §4, §6, §7): each equation on constructed matrices, every option, degenerate cases."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from merging.method import MergeConfigError, TensorTask, get_method
from merging.methods.rtsvm import (RTSVMConfig, dynamic_rank, layer_statistics, outlier_weights, outliers,
                                   sparsity)
from tests.test_tsvm import make, official_tsvm_delta, rel


def run(base, cands, name="w", sink=None, method="r_tsvm", **params):
    m = get_method(method)
    gp, mp = m.resolve(params, [{}] * len(cands))
    state = {"diagnostics": sink} if sink is not None else {}
    return m.fn(TensorTask(name, base, cands, gp, mp, state=state))


def reference(deltas, b, keep, coeffs):
    """Float64 U⊥ diag(ŝ) V⊥ᵀ with b basis vectors per task, the first `keep` weighted by c_t (§4.3)."""
    us, vs, ss = [], [], []
    for d, c in zip(deltas, coeffs):
        u, s, vh = torch.linalg.svd(d.double(), full_matrices=False)
        us.append(u[:, :b])
        vs.append(vh[:b].T)
        ss.append(torch.cat([c * s[:keep], torch.zeros(b - keep, dtype=torch.float64)]))
    pu, _, qu = torch.linalg.svd(torch.cat(us, 1), full_matrices=False)
    pv, _, qv = torch.linalg.svd(torch.cat(vs, 1), full_matrices=False)
    return ((pu @ qu) * torch.cat(ss)) @ (pv @ qv).T


CFG = RTSVMConfig()


# ---- defaults ------------------------------------------------------------------------------------

def test_config_defaults_are_the_spec_table():
    want = dict(alpha=1.0, n_sigma=3.0, stat_axis="row", std_ddof=0, center=True, outlier_value="raw", norm_p=1.0,
                weight_direction="proportional", weight_multiplier="one", svd_input="raw",
                use_outlier_weighting=True, beta=0.1, rank_rule="linear_reduction", base_rank_fraction=None,
                sparsity_mode="zero", sparsity_eps=0.0, sparsity_consensus="mean", min_rank=1,
                use_rank_selection=True, order="orthogonalize_budget_then_truncate", orthogonalizer="svd",
                exclude_keys=(), nonmatrix_merge="mean")
    got = dataclasses.asdict(CFG)
    assert {k: got[k] for k in want} == want
    resolved, _ = get_method("r_tsvm").resolve({}, [{}, {}])
    assert RTSVMConfig.from_params(resolved) == CFG


# ---- Eqs. (6)-(7) ------------------------------------------------------------------------------------

def test_eq6_7_outliers_placed_by_hand():
    d = torch.zeros(3, 100)
    d[0, 17] = 5.0  # row 0: μ = 0.05, σ = 0.4975 → only the planted entry exceeds 3σ
    d[1] = 2.0  # row 1: constant, σ = 0 → no outliers
    d[2, :50], d[2, 50:] = 1.0, -1.0  # row 2: ±1, |Δ − μ| = σ → none
    h, mask = outliers(d, CFG)
    assert mask.sum() == 1 and mask[0, 17]
    assert h[0, 17] == 5.0 and h.abs().sum() == 5.0  # H keeps the raw value (A5)


def test_eq7_center_and_outlier_value_options():
    d = torch.full((1, 100), 10.0)
    d[0, 3] = 10.5  # μ = 10.005, σ ≈ 0.0497
    _, centred = outliers(d, CFG)
    assert centred.sum() == 1 and centred[0, 3]
    _, uncentred = outliers(d, dataclasses.replace(CFG, center=False))
    assert uncentred.all()  # |Δ| ≫ 3σ everywhere
    h, _ = outliers(d, dataclasses.replace(CFG, outlier_value="centered"))
    assert math.isclose(float(h[0, 3]), 10.5 - 10.005, rel_tol=1e-4)


def test_eq6_axes_and_ddof():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 40, generator=g)
    x[4, 7], x[20, 33] = 9.0, -8.0
    _, row = outliers(x, CFG)
    _, col = outliers(x.T.contiguous(), dataclasses.replace(CFG, stat_axis="col"))
    assert torch.equal(row, col.T)
    _, layer = outliers(x, dataclasses.replace(CFG, stat_axis="layer"))
    mu, sd = x.double().mean(), x.double().std(correction=0)
    assert torch.equal(layer, (x.double() - mu).abs() > 3 * sd)
    # ddof=1 (sample std) with n_sigma chosen so the two estimators straddle an entry
    y = torch.zeros(1, 10)
    y[0, 0] = 1.0  # |y−μ| = 0.9; σ₀ = 0.3, σ₁ = 0.3162
    assert outliers(y, dataclasses.replace(CFG, n_sigma=2.9))[1][0, 0]
    assert not outliers(y, dataclasses.replace(CFG, n_sigma=2.9, std_ddof=1))[1][0, 0]


# ---- Eqs. (8), (12) -----------------------------------------------------------------------------

def planted(mags, m=20, n=64, seed=0):
    """Deltas whose rows are ±1 noise (no outliers) plus one planted outlier of size mags[t] per row."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for a in mags:
        d = torch.where(torch.rand(m, n, generator=g) < 0.5, -1.0, 1.0) * 0.01
        d[:, 5] = a
        out.append(d)
    return out


def test_eq8_proportional_weights_sum_to_one():
    deltas = planted([1.0, 2.0, 5.0])
    st = layer_statistics(deltas, CFG)
    assert st["outlier_fraction"] == pytest.approx([1 / 64] * 3)
    assert st["alpha_t"] == pytest.approx([1 / 8, 2 / 8, 5 / 8], rel=1e-6)
    assert math.isclose(sum(st["alpha_t"]), 1.0) and min(st["alpha_t"]) > 0


def test_eq8_directions_and_norm_p():
    m = [1.0, 2.0, 5.0]
    assert outlier_weights(m, "inverse") == pytest.approx([1 / 1.7, 0.5 / 1.7, 0.2 / 1.7])
    assert outlier_weights(m, "complement") == pytest.approx([7 / 16, 6 / 16, 3 / 16])
    assert outlier_weights([0.0, 0.0], "proportional") == [0.5, 0.5]
    assert outlier_weights([0.0, 3.0, 1.0], "inverse") == [1.0, 0.0, 0.0]
    st = layer_statistics(planted([1.0, 2.0]), dataclasses.replace(CFG, norm_p=2.0))
    assert st["outlier_mass"] == pytest.approx([math.sqrt(20), 2 * math.sqrt(20)], rel=1e-6)


def test_no_outliers_gives_uniform_weights():
    deltas = planted([0.01, -0.01, 0.01, 0.01])  # the "planted" entries are inside 3σ
    assert layer_statistics(deltas, CFG)["alpha_t"] == [0.25] * 4


def test_weights_unchanged_when_all_deltas_scale_and_merge_scales():
    base, cands = make((40, 32), 3, seed=1)
    deltas = [c - base for c in cands]
    a = layer_statistics(deltas, CFG)["alpha_t"]
    b = layer_statistics([3.0 * d for d in deltas], CFG)["alpha_t"]
    assert a == pytest.approx(b, rel=1e-5)
    m1 = run(base, cands) - base
    m3 = run(base, [base + 3.0 * d for d in deltas]) - base
    assert rel(m3, 3.0 * m1) < 1e-4


@pytest.mark.parametrize("direction", ["proportional", "inverse", "complement"])
def test_planted_outliers_move_the_weight_as_the_direction_says(direction):
    g = torch.Generator().manual_seed(2)
    cands = [0.01 * torch.randn(32, 48, generator=g) for _ in range(3)]
    cands[0][torch.arange(32), torch.arange(32)] = 1.0  # model 0 carries big outliers
    sink = {}
    run(torch.zeros(32, 48), cands, sink=sink, weight_direction=direction)
    alpha = sink["w"]["alpha_t"]
    assert sum(alpha) == pytest.approx(1.0)
    if direction == "proportional":
        assert alpha[0] > max(alpha[1:])
    else:
        assert alpha[0] < min(alpha[1:])


# ---- Eqs. (9)-(10) ------------------------------------------------------------------------------

def test_eq10_rank_table_of_the_spec():
    got = [dynamic_rank(819, s, CFG, 4096) for s in (0.0, 0.5, 0.8, 0.9, 1.0)]
    assert got == [737, 778, 802, 810, 819]
    assert dynamic_rank(204, 0.0, CFG, 1024) == 183 and dynamic_rank(204, 1.0, CFG, 1024) == 204
    assert dynamic_rank(819, 0.3, dataclasses.replace(CFG, beta=0.0), 4096) == 819
    assert dynamic_rank(100, 0.5, dataclasses.replace(CFG, rank_rule="linear_boost"), 400) == 105
    assert dynamic_rank(100, 0.25, dataclasses.replace(CFG, rank_rule="power", beta=0.5), 400) == 50
    assert dynamic_rank(10, 0.0, dataclasses.replace(CFG, beta=1.0, min_rank=3), 40) == 3
    assert dynamic_rank(819, 0.0, dataclasses.replace(CFG, use_rank_selection=False), 4096) == 819


def test_eq9_sparsity_modes_and_consensus():
    d = torch.ones(10, 10)
    d[:4] = 0.0  # 40 % exact zeros
    d[4, :5] = 1e-3  # small but not zero
    mask = torch.zeros_like(d, dtype=torch.bool)
    assert sparsity(d, mask, CFG) == pytest.approx(0.4)
    assert sparsity(d, mask, dataclasses.replace(CFG, sparsity_eps=1e-2)) == pytest.approx(0.45)
    assert sparsity(2 * d, mask, dataclasses.replace(CFG, sparsity_mode="relative", sparsity_eps=0.01)) \
        == pytest.approx(0.45)
    mask[0, :3] = True
    assert sparsity(d, mask, dataclasses.replace(CFG, sparsity_mode="non_outlier")) == pytest.approx(0.97)
    ds = [d.clone(), torch.ones(10, 10), torch.zeros(10, 10)]  # 0.4, 0, 1
    for how, want in [("mean", 1.4 / 3), ("median", 0.4), ("min", 0.0), ("max", 1.0)]:
        assert layer_statistics(ds, dataclasses.replace(CFG, sparsity_consensus=how))["sparsity"] == \
            pytest.approx(want)


def test_k_l_grows_with_sparsity():
    g = torch.Generator().manual_seed(3)
    ks = []
    for zero_frac in (0.0, 0.5, 0.9):
        cands = []
        for _ in range(3):
            d = torch.randn(90, 60, generator=g)
            d[torch.rand(90, 60, generator=g) < zero_frac] = 0.0
            cands.append(d)
        sink = {}
        run(torch.zeros(90, 60), cands, sink=sink, beta=0.5)
        ks.append(sink["w"]["k_l"])
        assert sink["w"]["k_base"] == 20
    assert ks[0] < ks[1] < ks[2] <= 20


# ---- orders and Eq. (11) ------------------------------------------------------------------------------

def _stats(base, cands, **kw):
    cfg = dataclasses.replace(CFG, **kw)
    return cfg, layer_statistics([c - base for c in cands], cfg)


@pytest.mark.parametrize("order,multiplier", [("orthogonalize_budget_then_truncate", "one"),
                                              ("truncate_then_orthogonalize", "num_models"),
                                              ("orthogonalize_full_then_truncate", "one")])
def test_each_order_matches_the_float64_reference(order, multiplier):
    base, cands = make((45, 36), 3, seed=4)
    cfg, st = _stats(base, cands, beta=0.5)
    k_base, k_l = st["k_base"], st["k_l"]
    assert k_l < k_base
    b = {"orthogonalize_budget_then_truncate": k_base, "truncate_then_orthogonalize": k_l,
         "orthogonalize_full_then_truncate": 36}[order]
    c = [(3 if multiplier == "num_models" else 1) * a for a in st["alpha_t"]]
    want = reference([x - base for x in cands], b, k_l, c)
    out = run(base, cands, beta=0.5, order=order, weight_multiplier=multiplier)
    assert rel(out - base, want) < 1e-4


def test_beta_zero_unweighted_num_models_reproduces_tsvm():
    base, cands = make((40, 30), 3, seed=5)
    tsvm = run(base, cands, method="tsvm", alpha=0.8)
    kw = dict(beta=0.0, use_outlier_weighting=False, weight_multiplier="num_models", alpha=0.8)
    assert rel(run(base, cands, **kw) - base, tsvm - base) < 1e-5
    assert rel(run(base, cands, use_rank_selection=False, use_outlier_weighting=False,
                   weight_multiplier="num_models") - base, official_tsvm_delta([c - base for c in cands])) < 1e-4
    # literal multiplier "one": exactly TSVM/T on matrices (§4.4 scale warning)
    one = run(base, cands, beta=0.0, use_outlier_weighting=False, alpha=0.8)
    assert rel(one - base, (tsvm - base) / 3) < 1e-5


def test_full_rank_first_order_is_the_mean_on_square_tensors():
    base, cands = make((24, 24), 3, seed=6)
    out = run(base, cands, order="orthogonalize_full_then_truncate", base_rank_fraction=1.0, beta=0.0,
              use_outlier_weighting=False, weight_multiplier="num_models")
    assert rel(out - base, sum(c - base for c in cands) / 3) < 1e-4


def test_thresholded_svd_input():
    base, cands = make((40, 30), 2, seed=7)
    deltas = [c - base for c in cands]
    # n_sigma = 1 keeps ~30 % of the entries, so every H(Δ_t) has full rank (a generic input)
    cfg, st = _stats(base, cands, n_sigma=1.0)
    hs = [outliers(d, cfg)[0] for d in deltas]
    want = reference(hs, st["k_base"], st["k_l"], st["alpha_t"])
    assert rel(run(base, cands, svd_input="thresholded", n_sigma=1.0) - base, want) < 1e-4


def test_vectors_excluded_keys_and_tiny_ranks_take_the_mean():
    base, cands = make((12, 9), 3, seed=8)
    mean = sum(c - base for c in cands) / 3
    assert torch.allclose(run(base[0], [c[0] for c in cands], alpha=0.5), base[0] + 0.5 * mean[0], atol=1e-6)
    out = run(base, cands, name="lm_head.weight", exclude_keys="lm_head.*")
    assert torch.allclose(out, base + mean, atol=1e-6)
    with pytest.warns(UserWarning, match="rank 2 < 3"):
        small = run(base[:2], [c[:2] for c in cands])
    assert torch.allclose(small, base[:2] + mean[:2], atol=1e-6)


@pytest.mark.parametrize("params,option", [
    ({"rank_rule": "linear_boost"}, "linear_boost"),
    ({"beta": 1.5}, "beta"),
    ({"beta": -0.1}, "beta"),
    ({"outlier_value": "centered", "center": False}, "outlier_value"),
    ({"base_rank_fraction": 0.0}, "base_rank_fraction"),
    ({"std_ddof": 2}, "std_ddof"),
    ({"n_sigma": -1}, "n_sigma"),
    ({"norm_p": 0}, "norm_p"),
    ({"min_rank": 0}, "min_rank"),
    ({"order": "sideways"}, "order"),
    ({"weight_direction": "up"}, "weight_direction"),
    ({"sparsity_mode": "relative", "sparsity_eps": 2.0}, "sparsity_eps"),
    ({"use_rank_selection": "yes"}, "use_rank_selection"),
])
def test_bad_options_are_config_errors_naming_the_option(params, option):
    with pytest.raises(MergeConfigError, match=option):
        get_method("r_tsvm").resolve(params, [{}, {}])


def test_linear_boost_works_with_truncate_first_order():
    base, cands = make((30, 30), 3, seed=9)
    sink = {}
    out = run(base, cands, sink=sink, rank_rule="linear_boost", order="truncate_then_orthogonalize", beta=0.5)
    assert sink["w"]["k_l"] >= sink["w"]["k_base"] and torch.isfinite(out).all()
