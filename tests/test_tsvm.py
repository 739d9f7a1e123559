"""TSVM (spec rtsvm.md §3) against an independent float64 recomputation, and its properties."""
from __future__ import annotations

import warnings

import pytest
import torch

from merging.method import MergeConfigError, TensorTask, get_method
from merging.svd import SpectralWarning, SVDOptions, polar, polar_factors, polar_factors_fast, top_svd


def run(name, base, cands, name_key="w", seed=0, state=None, model_params=None, **params):
    m = get_method(name)
    gp, mp = m.resolve(params, model_params or [{}] * len(cands))
    return m.fn(TensorTask(name_key, base, cands, gp, mp, seed=seed, state=state if state is not None else {}))


def official_tsvm_delta(deltas, alpha=1.0):
    """§3 in float64 with the reference code's layout: r slots, task i in [i·k, (i+1)·k)."""
    d64 = [d.double() for d in deltas]
    T = len(d64)
    if d64[0].ndim != 2:
        return alpha * sum(d64) / T
    sum_u = sum_s = sum_vh = None
    for i, d in enumerate(d64):
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        if sum_u is None:
            sum_u, sum_s, sum_vh = torch.zeros_like(u), torch.zeros_like(s), torch.zeros_like(vh)
        k = int(s.shape[0] * (1 / T))
        sum_u[:, i * k:(i + 1) * k] = u[:, :k]
        sum_s[i * k:(i + 1) * k] = s[:k]
        sum_vh[i * k:(i + 1) * k, :] = vh[:k, :]
    u_u, _, vh_u = torch.linalg.svd(sum_u, full_matrices=False)
    u_v, _, vh_v = torch.linalg.svd(sum_vh, full_matrices=False)
    return alpha * torch.linalg.multi_dot((u_u, vh_u, torch.diag(sum_s), u_v, vh_v))


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def make(shape, T, seed=0, scale=0.02):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + scale * torch.randn(shape, generator=g) for _ in range(T)]


@pytest.mark.parametrize("shape,T", [((40, 30), 3), ((37, 23), 4), ((20, 50), 5), ((24,), 3), ((3, 4, 5), 2)])
def test_matches_float64_reference(shape, T):
    base, cands = make(shape, T, seed=T)
    out = run("tsvm", base, cands, alpha=0.7)
    want = official_tsvm_delta([c - base for c in cands], alpha=0.7)
    assert out.dtype == torch.float32 and out.shape == base.shape
    assert rel(out - base, want) < 1e-4


def test_equals_task_arithmetic_for_orthogonal_rank_k_deltas():
    m, n, T = 30, 24, 3
    k = min(m, n) // T
    g = torch.Generator().manual_seed(1)
    q = torch.linalg.qr(torch.randn(m, T * k, generator=g, dtype=torch.float64)).Q
    p = torch.linalg.qr(torch.randn(n, T * k, generator=g, dtype=torch.float64)).Q
    deltas = [(q[:, t * k:(t + 1) * k] * torch.linspace(3, 1, k, dtype=torch.float64)
               * (t + 1)) @ p[:, t * k:(t + 1) * k].T for t in range(T)]
    base = torch.zeros(m, n)
    out = run("tsvm", base, [d.float() for d in deltas])
    assert rel(out, sum(deltas)) < 1e-5


def test_invariant_to_candidate_order():
    base, cands = make((36, 28), 3, seed=2)
    a = run("tsvm", base, cands)
    b = run("tsvm", base, cands[::-1])
    assert rel(a - base, b - base) < 1e-5


def test_polar_and_merge_invariant_to_svd_sign_flips():
    g = torch.Generator().manual_seed(3)
    u_hat = torch.randn(20, 9, generator=g, dtype=torch.float64)
    v_hat = torch.randn(15, 9, generator=g, dtype=torch.float64)
    s_hat = torch.rand(9, generator=g, dtype=torch.float64)
    signs = torch.tensor([1, -1, -1, 1, -1, 1, 1, -1, -1], dtype=torch.float64)
    pu, _ = polar(u_hat)
    pv, _ = polar(v_hat)
    fu, _ = polar(u_hat * signs)  # a flipped triplet flips u and v together
    fv, _ = polar(v_hat * signs)
    assert torch.allclose((pu * s_hat) @ pv.T, (fu * s_hat) @ fv.T, atol=1e-12)


@pytest.mark.parametrize("shape", [(120, 30), (30, 120)])
def test_exact_driver_qr_first_path_on_long_matrices_matches_a_full_svd(shape):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * torch.exp(-torch.arange(shape[1]) / 5.0)
    u, s, v = top_svd(x, 8)  # 120 ≥ 2·30: geqrf + SVD of R + ormqr
    uu, ss, vh = torch.linalg.svd(x, full_matrices=False)
    assert u.shape == (shape[0], 8) and v.shape == (shape[1], 8)
    assert torch.allclose(s, ss[:8], rtol=1e-12)
    assert torch.allclose(u.T @ u, torch.eye(8, dtype=x.dtype), atol=1e-12)
    assert torch.allclose((u * s) @ v.T, (uu[:, :8] * ss[:8]) @ vh[:8], atol=1e-12)


def test_a_small_but_real_singular_value_of_a_square_basis_is_kept():
    # Regression: a SmolLM2-shaped down_proj (T = 3, square 576×576 basis) had σ_min = 13·eps·σ_max;
    # the partial isometry then dropped a real direction (3.8e-2 off the float64 merge).
    g = torch.Generator().manual_seed(7)
    q1 = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64)).Q
    q2 = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64)).Q
    sv = torch.linspace(1.0, 0.2, 40, dtype=torch.float64)
    sv[-1] = 20 * torch.finfo(torch.float32).eps
    x = ((q1 * sv) @ q2.T).float()
    _, _, deficient = polar_factors(x)
    assert not deficient
    # Below the 4·eps cut but isolated (the next σ is far above rounding): still a real direction.
    # Seen on the 30-layer bench at 3.46·eps; cutting it put that down_proj 3.8e-2 off float64.
    eps = torch.finfo(torch.float32).eps
    for ratio in (3.0, 3.5):
        sv[-1] = ratio * eps
        x = ((q1 * sv) @ q2.T).float()
        smin = float(torch.linalg.svdvals(x)[-1] / torch.linalg.svdvals(x)[0])
        assert 2 * eps < smin < 4 * eps  # the case under test: under the cut, over rounding
        p, qh, deficient = polar_factors(x)
        assert not deficient
        assert rel((p @ qh).double(), q1 @ q2.T) < 1e-4
    # A cluster of near-zero values (a duplicated block) is still cut.
    dup = torch.cat([x[:, :20], x[:, :20]], 1)
    assert polar_factors(dup)[2]


def test_gram_polar_route_matches_the_svd_and_falls_back_when_it_must():
    g = torch.Generator().manual_seed(5)
    tall = torch.linalg.qr(torch.randn(300, 40, generator=g)).Q + 0.05 * torch.randn(300, 40, generator=g)
    left, right, deficient = polar_factors_fast(tall)
    assert left is tall and right.shape == (40, 40) and not deficient  # took the Gram route
    assert rel(left @ right, polar(tall.double())[0]) < 1e-5
    dup = torch.cat([tall[:, :20], tall[:, :20]], 1)  # rank-deficient: the SVD's partial isometry
    left, right, deficient = polar_factors_fast(dup)
    assert deficient and rel(left @ right, polar(dup)[0]) < 1e-6
    square = torch.randn(40, 40, generator=g)  # not tall enough: the SVD
    left, right, _ = polar_factors_fast(square)
    assert left is not square and rel(left @ right, polar(square.double())[0]) < 1e-4


def test_vectors_and_excluded_keys_take_the_mean_scaled_by_alpha():
    base, cands = make((16, 8), 4, seed=4)
    mean = sum(c - base for c in cands) / 4
    out = run("tsvm", base, cands, name_key="model.embed_tokens.weight", alpha=2.0,
              exclude_keys=["*embed_tokens*", "lm_head.weight"])
    assert torch.allclose(out, base + 2.0 * mean, atol=1e-6)
    summed = run("tsvm", base[0], [c[0] for c in cands], nonmatrix_merge="sum")
    assert torch.allclose(summed, base[0] + 4 * mean[0], atol=1e-6)


def test_rank_below_number_of_models_warns_and_takes_the_mean():
    base, cands = make((2, 7), 3, seed=5)
    with pytest.warns(SpectralWarning, match="rank 2 < 3 candidates"):
        out = run("tsvm", base, cands)
    assert torch.allclose(out, base + sum(c - base for c in cands) / 3, atol=1e-6)


def test_duplicate_candidates_warn_and_give_a_deterministic_sensible_result():
    base, cands = make((24, 18), 2, seed=6)
    dup = [cands[0], cands[0].clone()]
    with pytest.warns(SpectralWarning, match="linearly dependent"):
        a = run("tsvm", base, dup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectralWarning)
        b = run("tsvm", base, dup)
    assert torch.equal(a, b)
    # The partial isometry merges two identical tasks into that task's rank-k truncation.
    u, s, v = top_svd((cands[0] - base).double(), 9)
    assert rel(a - base, (u * s) @ v.T) < 1e-4


def test_non_finite_values_are_errors():
    base, cands = make((8, 6), 2)
    cands[1][3, 2] = float("nan")
    with pytest.raises(ValueError, match="candidate 1 has non-finite"):
        run("tsvm", base, cands)


def test_per_model_weight_scales_task_vector_before_svd():
    base, cands = make((30, 21), 3, seed=7)
    w = [0.5, 1.0, 2.0]
    out = run("tsvm", base, cands, model_params=[{"weight": x} for x in w])
    want = official_tsvm_delta([x * (c - base) for x, c in zip(w, cands)])
    assert rel(out - base, want) < 1e-4


def test_eigh_orthogonalizer_and_float64_agree_with_default():
    base, cands = make((48, 33), 3, seed=8)
    ref = run("tsvm", base, cands) - base
    assert rel(run("tsvm", base, cands, orthogonalizer="eigh") - base, ref) < 1e-4
    assert rel(run("tsvm", base, cands, compute_dtype="float64") - base, ref) < 1e-5


def decaying(m, n, seed, decay=20.0):
    """A matrix with a realistic decaying spectrum σ_i = exp(-i/decay)."""
    g = torch.Generator().manual_seed(seed)
    r = min(m, n)
    q = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64)).Q
    p = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64)).Q
    return ((q * torch.exp(-torch.arange(r, dtype=torch.float64) / decay)) @ p.T).float()


# Stated bounds (bench/README.md, TSVM section): relative Frobenius error of the merged delta.
FAST_BOUNDS = {"gram": 1e-4, "randomized": 2e-3}


@pytest.mark.parametrize("driver", ["gram", "randomized"])
def test_fast_drivers_agree_with_exact_on_decaying_spectra(driver):
    m, n, T = 96, 72, 3
    base = torch.zeros(m, n)
    cands = [decaying(m, n, seed=10 + t) for t in range(T)]
    exact = run("tsvm", base, cands)
    fast = run("tsvm", base, cands, svd_driver=driver)
    assert rel(fast, exact) < FAST_BOUNDS[driver]
    fast_r = run("r_tsvm", base, cands, svd_driver=driver)
    assert rel(fast_r, run("r_tsvm", base, cands)) < FAST_BOUNDS[driver]


def test_randomized_driver_is_seeded_and_reproducible():
    x = decaying(60, 40, seed=3)
    a = top_svd(x, 10, SVDOptions("randomized", None, 2), name="k")
    b = top_svd(x, 10, SVDOptions("randomized", None, 2), name="k")
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    u, s, v = top_svd(x.double(), 10)
    assert torch.allclose(a[1].double(), s, rtol=1e-3)


@pytest.mark.parametrize("params,option", [
    ({"svd_driver": "fast"}, "svd_driver"),
    ({"oversample": -1}, "oversample"),
    ({"power_iters": 1.5}, "power_iters"),
    ({"exclude_keys": 3}, "exclude_keys"),
    ({"alpha": float("inf")}, "alpha"),
    ({"compute_dtype": "float16"}, "compute_dtype"),
    ({"orthogonalizer": "qr"}, "orthogonalizer"),
    ({"bogus": 1}, "bogus"),
])
def test_bad_options_name_the_option(params, option):
    with pytest.raises(MergeConfigError, match=option):
        get_method("tsvm").resolve(params, [{}, {}])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_the_device_of_its_inputs():
    base, cands = make((64, 48), 3, seed=9)
    out = run("tsvm", base.cuda(), [c.cuda() for c in cands], svd_driver="randomized")
    assert out.device.type == "cuda"
    assert rel(out.cpu() - base, run("tsvm", base, cands) - base) < 1e-3


def test_gram_driver_uses_float32_top_k_only_where_the_spectrum_allows():
    from merging.svd import _gram_top_float32

    def recon(t):
        u, s, v = (a.double() for a in t)
        return (u * s) @ v.T

    gentle = decaying(120, 80, seed=4, decay=20.0)  # σ_k/σ_1 = e^-1 at k = 20
    steep = decaying(120, 80, seed=5, decay=2.0)  # σ_k/σ_1 = e^-10 < 1 %
    for x, k in ((gentle, 20), (gentle.T.contiguous(), 20), (steep, 20)):
        exact = recon(top_svd(x.double(), k))
        fast = top_svd(x, k, SVDOptions("gram"))
        assert fast[0].dtype == torch.float32 and fast[0].shape == (x.shape[0], k)
        assert rel(recon(fast), exact) < 1e-5
    assert _gram_top_float32(gentle, 20) is not None
    assert _gram_top_float32(steep, 20) is None  # float32 λ_k would be rounding: float64 route
