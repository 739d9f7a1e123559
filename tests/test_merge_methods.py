"""Every merge method against an independent float64 recomputation of the spec's formulas.

The references below are written from shared/spec/merging-methods.md with full sorts and loops —
deliberately not the engine's k-th value / histogram code — on the tensors of real tiny checkpoints.
"""
from __future__ import annotations

import hashlib
import itertools
import math

import pytest
import torch
from safetensors.torch import load_file

from h3ops.checkpoint import weight_files
from merging import merge


def _load(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in weight_files(folder):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def inputs(tiny_base, tiny_candidates):
    return _load(tiny_base), [_load(c) for c in tiny_candidates]


WEIGHTS = [1.0, 0.7, 0.4]
DENSITIES = [0.5, 0.3, 0.8]


def _config(method, base, cands, global_params=None, per_model=None):
    per_model = per_model or [{} for _ in cands]
    return {"merge_method": method, "base_model": str(base),
            "models": [{"model": str(c), "parameters": p} for c, p in zip(cands, per_model)],
            "parameters": global_params or {}}


def _uniform(seed: int, name: str, i: int, shape) -> torch.Tensor:
    # The spec's seeding contract: hash(seed, tensor name, candidate index), drawn on the CPU.
    key = f"{seed}\0{name}\0{i}".encode()
    s = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)
    return torch.rand(shape, generator=torch.Generator().manual_seed(s), dtype=torch.float32).double()


# ---- float64 references -------------------------------------------------------------------------

def r_keep_sorted(d, start, stop):
    order = torch.argsort(d.abs().flatten(), stable=True)
    keep = torch.zeros(d.numel(), dtype=torch.bool)
    keep[order[start:stop]] = True
    return d * keep.view(d.shape)


def r_magnitude(d, dens):
    if dens >= 1:
        return d
    n = d.numel()
    k = max(1, int(dens * n))
    return r_keep_sorted(d, n - k, n)


def r_crumbs(d, dens, gamma):
    if dens >= 1:
        return d
    n = d.numel()
    target, n_top = int(dens * n), int(gamma * n)
    n_bot = max(0, n - target - n_top)
    return r_keep_sorted(d, n_bot, n_bot + target)


def r_rescale(d, m, rescale, p):
    out = d * m
    if rescale == "l1":
        a, b = d.abs().sum(), out.abs().sum()
        if a >= 1e-7 and b >= 1e-7:
            out = out * a / b
    elif rescale == "inverse_p":
        out = out / p
    return out


def r_drop(d, dens, rescale, seed, name, i):
    if dens >= 1:
        return d
    m = (_uniform(seed, name, i, d.shape) < dens).double()
    return r_rescale(d, m, rescale, dens)


def r_magprune(d, dens, eps, rescale, seed, name, i):
    if dens >= 1:
        return d
    rows = d.reshape(1, -1) if d.dim() < 2 else d.reshape(d.shape[0], -1)
    n = rows.shape[1]
    ranks = torch.empty_like(rows)
    for r in range(rows.shape[0]):  # rank 1 = smallest |δ| in its row
        ranks[r, torch.argsort(rows[r].abs(), stable=True)] = torch.arange(1, n + 1, dtype=torch.float64)
    rho = (ranks - 1) / (n - 1)
    p = (dens - eps) + 2 * eps * rho
    m = (_uniform(seed, name, i, rows.shape) < p).double()
    return r_rescale(rows, m, rescale, p).view(d.shape)


def r_combine(base, sparse, weights, *, ties, normalize, lam=1.0, unweighted=False):
    tau = [w * d for w, d in zip(weights, sparse)]
    if ties:
        basis = sparse if unweighted else tau
        s = torch.where(sum(basis) >= 0, 1.0, -1.0).double()
        masks = [(torch.sign(b) == s).double() for b in basis]
        delta = sum(m * t for m, t in zip(masks, tau))
        if normalize:
            div = sum(masks) if unweighted else sum(w * m for w, m in zip(weights, masks))
            delta = delta / torch.where(div == 0, torch.ones_like(div), div)
    else:
        delta = sum(tau)
        if normalize:
            tot = sum(weights)
            delta = delta / (tot if abs(tot) >= 1e-8 else 1.0)
    return base + lam * delta


def r_model_stock(base, cands, filter_wise=False, angle=False):
    n = len(cands)
    rows = (lambda t: t.reshape(t.shape[0], -1)) if filter_wise and base.dim() >= 2 else (lambda t: t.reshape(1, -1))
    deltas = [rows(c - base) for c in cands]
    cos_pairs = []
    for a, b in itertools.combinations(deltas, 2):
        c = (a * b).sum(1) / torch.clamp(a.norm(dim=1) * b.norm(dim=1), min=1e-6)
        cos_pairs.append(c.clamp(-1, 1))
    stacked = torch.stack(cos_pairs)
    cos = torch.cos(torch.arccos(stacked).mean(0)) if angle else stacked.mean(0)
    t = (n * cos / (1 + (n - 1) * cos)).unsqueeze(1)
    avg = rows(sum(cands) / n)
    return (t * avg + (1 - t) * rows(base)).reshape(base.shape)


# ---- the cases ----------------------------------------------------------------------------------

def _reference(method, name, base, cands, opts, seed):
    w, dens = WEIGHTS, DENSITIES
    deltas = [c - base for c in cands]
    g = opts.get("global", {})
    if method == "linear":
        return sum(wi * c for wi, c in zip(w, cands)) / sum(w)
    if method == "rewarded_soup":
        lam = [x / sum(w) for x in w]
        return sum(li * c for li, c in zip(lam, cands))
    if method == "task_arithmetic":
        return r_combine(base, deltas, w, ties=False, normalize=False, lam=g.get("lambda", 1.0))
    if method == "model_stock":
        return r_model_stock(base, cands, g.get("filter_wise", False), g.get("cos_average") == "angle")
    unweighted = g.get("sign_election") == "unweighted"
    ties = method in ("ties", "dare_ties", "della", "breadcrumbs_ties")
    normalize = g.get("normalize", method in ("ties", "della"))
    if method == "ties":
        sparse = [r_magnitude(d, k) for d, k in zip(deltas, dens)]
    elif method.startswith("dare"):
        sparse = [r_drop(d, k, g.get("rescale", "l1"), seed, name, i) for i, (d, k) in enumerate(zip(deltas, dens))]
    elif method.startswith("della"):
        sparse = [r_magprune(d, k, 0.15, g.get("rescale", "l1"), seed, name, i)
                  for i, (d, k) in enumerate(zip(deltas, dens))]
    else:
        sparse = [r_crumbs(d, k, 0.01) for d, k in zip(deltas, dens)]
    return r_combine(base, sparse, w, ties=ties, normalize=normalize, lam=g.get("lambda", 1.0), unweighted=unweighted)


CASES = [
    ("linear", {}), ("rewarded_soup", {}), ("task_arithmetic", {}), ("task_arithmetic", {"global": {"lambda": 0.6}}),
    ("ties", {}), ("ties", {"global": {"sign_election": "unweighted"}}), ("ties", {"global": {"normalize": False}}),
    ("dare_linear", {}), ("dare_linear", {"global": {"rescale": "inverse_p"}}), ("dare_ties", {}),
    ("della_linear", {}), ("della", {}), ("della", {"global": {"rescale": "inverse_p", "lambda": 0.9}}),
    ("breadcrumbs", {}), ("breadcrumbs_ties", {}), ("model_stock", {}),
    ("model_stock", {"global": {"filter_wise": True, "cos_average": "angle"}}),
]


@pytest.mark.parametrize("method,opts", CASES, ids=[f"{m}-{'-'.join(map(str, o.get('global', {}).values())) or 'default'}"
                                                    for m, o in CASES])
def test_method_matches_float64_reference(method, opts, inputs, tiny_base, tiny_candidates, tmp_path):
    seed = 7
    per_model = [{"weight": w} for w in WEIGHTS]
    if method not in ("linear", "rewarded_soup", "task_arithmetic", "model_stock"):
        per_model = [{"weight": w, "density": d} for w, d in zip(WEIGHTS, DENSITIES)]
    if method == "model_stock":
        per_model = None
    out = merge(_config(method, tiny_base, tiny_candidates, opts.get("global"), per_model), tmp_path / "m",
                seed=seed, progress=False)
    merged = _load(out)
    base, cands = inputs
    assert set(merged) == set(base)
    for name, value in merged.items():
        ref = _reference(method, name, base[name].double(), [c[name].double() for c in cands], opts, seed)
        torch.testing.assert_close(value.double(), ref, rtol=1e-5, atol=2e-6, msg=lambda m: f"{method} {name}: {m}")


def test_ties_model_scope_uses_one_threshold_per_candidate(inputs, tiny_base, tiny_candidates, tmp_path):
    """topk_scope: model (the TIES paper): keep the top d·n |δ| of each candidate over the whole model."""
    per_model = [{"weight": w, "density": d} for w, d in zip(WEIGHTS, DENSITIES)]
    out = merge(_config("ties", tiny_base, tiny_candidates, {"topk_scope": "model"}, per_model), tmp_path / "m",
                progress=False)
    merged = _load(out)
    base, cands = inputs
    names = sorted(n for n in base if base[n].is_floating_point())
    sparse = {n: [] for n in names}
    for i, (c, dens) in enumerate(zip(cands, DENSITIES)):
        flat = torch.cat([(c[n].double() - base[n].double()).flatten() for n in names])
        k = max(1, int(dens * flat.numel()))
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[torch.argsort(flat.abs(), stable=True)[flat.numel() - k:]] = True
        kept = flat * keep
        assert int(keep.sum()) == k
        pos = 0
        for n in names:
            sparse[n].append(kept[pos:pos + base[n].numel()].view(base[n].shape))
            pos += base[n].numel()
    for n in names:
        ref = r_combine(base[n].double(), sparse[n], WEIGHTS, ties=True, normalize=True)
        torch.testing.assert_close(merged[n].double(), ref, rtol=1e-5, atol=2e-6)


def test_magnitude_keeps_exactly_k_with_ties():
    from merging.ops import crumbs, magnitude

    d = torch.tensor([1.0, -2.0, 2.0, 2.0, -2.0, 0.5, 3.0, 0.0])
    out = magnitude(d, 0.375)  # k = 3: the 3.0 and two of the four tied 2.0s
    assert int((out != 0).sum()) == 3 and out[6] == 3.0
    assert torch.equal(out, r_magnitude(d.double(), 0.375).float())  # stable order: the later ties
    assert int((crumbs(d, 0.5, 0.0) != 0).sum()) == 4  # gamma 0 keeps the top `target`, never nothing
    assert torch.equal(crumbs(d, 0.5, 0.2), r_crumbs(d.double(), 0.5, 0.2).float())


def _task(delta_size=200_000, seed=3):
    from merging.method import TensorTask

    g = torch.Generator().manual_seed(0)
    base = torch.randn(delta_size, generator=g)
    cand = base + 0.01 * torch.randn(delta_size, generator=g)
    return TensorTask("layer.weight", base, [cand], {}, [{}], seed=seed), cand - base


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_dare_kept_fraction_and_rescaling(density):
    from merging.ops import drop

    task, delta = _task()
    l1 = drop(task, 0, delta, density, "l1")
    kept = l1 != 0
    frac = kept.double().mean().item()
    # Bernoulli(d) over 200k entries: 6 standard deviations is < 0.007.
    assert abs(frac - density) < 6 * math.sqrt(density * (1 - density) / delta.numel())
    assert l1.abs().double().sum().item() == pytest.approx(delta.abs().double().sum().item(), rel=1e-5)
    inv = drop(task, 0, delta, density, "inverse_p")
    assert torch.equal(inv != 0, kept)  # the same mask for the same (seed, name, model)
    torch.testing.assert_close(inv[kept], delta[kept] / density)
    none = drop(task, 0, delta, density, "none")
    torch.testing.assert_close(none[kept], delta[kept])
    other, _ = _task(seed=4)
    assert not torch.equal(drop(other, 0, delta, density, "none") != 0, kept)  # the seed matters


def test_della_keep_probability_grows_with_magnitude():
    from merging.ops import magprune

    task, delta = _task()
    kept = magprune(task, 0, delta, 0.5, 0.15, "none") != 0
    order = delta.abs().argsort()
    low, high = kept[order[:50_000]].double().mean().item(), kept[order[-50_000:]].double().mean().item()
    assert 0.34 < low < 0.42 and 0.58 < high < 0.66  # p from 0.35 to 0.65, linear in rank


def test_magnitude_ranks_match_a_stable_argsort_with_ties_and_signed_zeros():
    from merging.ops import magnitude_ranks

    g = torch.Generator().manual_seed(3)
    rows = torch.randint(-3, 4, (40, 257), generator=g).float()  # many ties, ±0
    rows[0, :5] = -0.0
    rows[1] = torch.randn(257, generator=g) * 1e-30  # subnormal-scale values keep their order
    want = torch.empty(rows.shape, dtype=torch.int64)
    for r in range(rows.shape[0]):
        want[r, torch.argsort(rows[r].abs(), stable=True)] = torch.arange(rows.shape[1])
    assert torch.equal(magnitude_ranks(rows), want)
    assert torch.equal(magnitude_ranks(rows[:, :1]), torch.zeros(40, 1, dtype=torch.int64))
