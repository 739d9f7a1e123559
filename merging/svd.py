"""Linear algebra of the spectral merges (TSVM, R-TSVM): top-k SVD drivers, polar factors, STI.

Everything runs on the device of its inputs (CPU or CUDA) in the compute dtype the caller chose
(float32 by default, float64 on request). Three drivers return the same top-k triplets:

* ``exact``      — ``torch.linalg.svd`` of the whole matrix, then the first k triplets.
* ``gram``       — eigen-decomposition of the smaller Gram matrix: in float32 with only the top
                   k eigenpairs computed when the spectrum allows it (GRAM32_MIN_RATIO), else in
                   float64, so the squared condition number costs no accuracy for the retained
                   (leading) triplets.
* ``randomized`` — Halko-Martinsson-Tropp range finder with oversampling and power iterations
                   (QR re-orthonormalised each pass), seeded so results are reproducible.

A driver is only a way to get the leading triplets; the spectral merge itself is `spectral_merge`.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import torch

SVD_DRIVERS = ("exact", "gram", "randomized")
ORTHOGONALIZERS = ("svd", "eigh")
COMPUTE_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class SpectralWarning(UserWarning):
    """A spectral merge met an input it can only handle by a documented fallback."""


@dataclass(frozen=True)
class SVDOptions:
    driver: str = "exact"
    oversample: int | None = None  # randomized: extra sketch columns beyond k; None → k (sketch 2k)
    power_iters: int = 2  # randomized: subspace iterations (more = accurate on flat spectra)
    compute_dtype: str = "float32"
    seed: int = 0  # randomized: sketch seed (mixed with the tensor name by the caller)

    @property
    def dtype(self) -> torch.dtype:
        return COMPUTE_DTYPES[self.compute_dtype]


def sketch_seed(seed: int, name: str) -> int:
    """Seed of the randomized sketch for one tensor: independent of order, threads and device."""
    h = hashlib.sha256(f"{seed}\0{name}\0svd".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def top_svd(x: torch.Tensor, k: int, opts: SVDOptions = SVDOptions(), name: str = ""):
    """Leading k singular triplets of x (m×n): U (m×k), S (k), V (n×k), S descending."""
    r = min(x.shape)
    k = max(0, min(int(k), r))
    if opts.driver == "gram":
        return _gram_svd(x, k)
    extra = k if opts.oversample is None else opts.oversample
    if opts.driver == "randomized" and k + extra < r:
        return _randomized_svd(x, k, opts, name)
    return _exact_svd(x, k)


# A matrix at least this many times taller than wide (or wider than tall) is QR-factored first;
# see _exact_svd.
QR_FIRST_ASPECT = 2


def _exact_svd(x: torch.Tensor, k: int):
    """Leading k triplets from a full SVD. For a long matrix (p ≥ 2q) it is x = QR, SVD of the q×q
    R, then U_k = Q·U_R[:, :k] applied from the Householder reflectors (ormqr): LAPACK's gesdd
    takes the same QR path but forms all of Q and all q columns of U (≈ 6pq² flops against
    ≈ 2pq² + 4pqk here): the 49152×576 embedding at k = r/3 is about 1.7x faster, to rounding."""
    m, n = x.shape
    p, q = max(m, n), min(m, n)
    if k == 0 or k >= q or p < QR_FIRST_ASPECT * q:
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        return u[:, :k], s[:k], vh[:k].mT
    a = x.mT if m < n else x  # tall view: x = aᵀ swaps the roles of U and V
    h, tau = torch.geqrf(a)
    ur, s, vh = torch.linalg.svd(h[:q].triu())
    c = torch.zeros(p, k, dtype=x.dtype, device=x.device)
    c[:q] = ur[:, :k]
    long_side = torch.ormqr(h, tau, c)  # Q·[U_R[:, :k]; 0]
    short_side = vh[:k].mT
    return (short_side, s[:k], long_side) if m < n else (long_side, s[:k], short_side)


# The gram driver first tries the Gram matrix in float32 with LAPACK asked for its top k eigenpairs
# only (syevr through scipy): 1.6-3x faster than a float32 SVD per task matrix (bench/README.md,
# TSVM). σ² squares the spread of the spectrum, so this holds the leading triplets to SVD accuracy
# only while λ_k ≥ GRAM32_MIN_RATIO·λ_1 (σ_k ≥ 1 % of σ_1); a steeper spectrum takes float64.
GRAM32_MIN_RATIO = 1e-4


def _gram_svd(x: torch.Tensor, k: int):
    if x.device.type == "cpu" and x.dtype == torch.float32 and k > 0:
        top = _gram_top_float32(x, k)
        if top is not None:
            return top
    # Eigen-decompose the smaller Gram matrix in float64: σ² loses half the digits in float32.
    x64 = x.double()
    tall = x.shape[0] >= x.shape[1]
    g = x64.mT @ x64 if tall else x64 @ x64.mT
    lam, vec = torch.linalg.eigh(g)  # ascending
    lam, vec = lam.flip(0)[:k].clamp_min(0), vec.flip(1)[:, :k]
    s = lam.sqrt()
    # The other side from x·v/σ; a zero σ has no defined vector, and its mass is zero anyway.
    other = (x64 @ vec if tall else x64.mT @ vec) / torch.where(s > 0, s, torch.ones_like(s))
    u, v = (other, vec) if tall else (vec, other)
    return u.to(x.dtype), s.to(x.dtype), v.to(x.dtype)


def _gram_top_float32(x: torch.Tensor, k: int):
    from scipy.linalg import eigh

    tall = x.shape[0] >= x.shape[1]
    g = x.mT @ x if tall else x @ x.mT
    q = g.shape[0]
    lam, vec = eigh(g.numpy(), subset_by_index=[q - k, q - 1], driver="evr", overwrite_a=True, check_finite=False)
    lam, vec = torch.from_numpy(lam[::-1].copy()), torch.from_numpy(vec[:, ::-1].copy())  # descending
    if not bool(lam[-1] >= GRAM32_MIN_RATIO * lam[0]) or not bool(lam[0] > 0):
        return None
    s = lam.sqrt()
    other = (x @ vec if tall else x.mT @ vec) / s
    return (other, s, vec) if tall else (vec, s, other)


def _randomized_svd(x: torch.Tensor, k: int, opts: SVDOptions, name: str):
    m, n = x.shape
    # TSVM keeps k = r/T triplets, far from the small-k regime where +8 columns suffice: with a
    # sketch of 2k the error on decaying spectra is ~1e-5 (bench/README.md), with +8 it is ~20 %.
    ell = k + (k if opts.oversample is None else opts.oversample)
    gen = torch.Generator(device=x.device).manual_seed(sketch_seed(opts.seed, name))
    omega = torch.randn(n, ell, generator=gen, device=x.device, dtype=x.dtype)
    q = torch.linalg.qr(x @ omega).Q
    for _ in range(opts.power_iters):
        q = torch.linalg.qr(x.mT @ q).Q
        q = torch.linalg.qr(x @ q).Q
    ub, s, vh = torch.linalg.svd(q.mT @ x, full_matrices=False)
    return (q @ ub[:, :k]), s[:k], vh[:k].mT


def polar(x: torch.Tensor, method: str = "svd") -> tuple[torch.Tensor, bool]:
    """Orthogonal polar factor of x (closest matrix with orthonormal columns, or rows if wide).

    Returns (factor, deficient). When x is rank-deficient (duplicate or linearly dependent task
    blocks) the polar factor is not unique; we return the unique *partial isometry* built from
    the non-zero singular directions only, so the result does not depend on LAPACK's arbitrary
    completion (two identical tasks then merge to that task, i.e. their mean).
    """
    if x.numel() == 0:
        return x.clone(), False
    if method == "svd":
        p, qh, deficient = polar_factors(x)
        return p @ qh, deficient
    if method == "eigh":  # TSVM_2 whitening: X (XᵀX)^{-1/2} (or (XXᵀ)^{-1/2} X when wide)
        tall = x.shape[0] >= x.shape[1]
        g = x.mT @ x if tall else x @ x.mT
        lam, e = torch.linalg.eigh(g)
        sv = lam.clamp_min(0).sqrt()
        keep = sv > _rank_tol(x, sv.max())
        inv = torch.where(keep, 1.0 / torch.where(keep, sv, torch.ones_like(sv)), torch.zeros_like(sv))
        w = (e * inv) @ e.mT
        return (x @ w if tall else w @ x), not bool(keep.all())
    raise ValueError(f"orthogonalizer must be one of {list(ORTHOGONALIZERS)}, got {method!r}")


def polar_factors(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(P, Qᵀ, deficient) with polar(x) = P Qᵀ, restricted to the non-zero singular directions."""
    p, d, qh = torch.linalg.svd(x, full_matrices=False)
    keep = d > _rank_tol(x, d[0], factor=4.0)
    if bool(keep.all()) or _isolated_tail(d, x.dtype):
        return p, qh, False
    return p[:, keep], qh[keep], True


def _isolated_tail(d: torch.Tensor, dtype: torch.dtype) -> bool:
    """One singular value under the cut but above pure rounding, far below the next one: a real,
    tiny direction of a random square basis (its singular vectors are fixed by the gap), not the
    cluster of near-zero values that duplicate or collinear tasks leave. Seen on the 30-layer
    SmolLM2-shaped bench: σ_min = 3.46·eps·σ_max with σ_(n-1) = 31454·eps·σ_max; cutting it put
    that down_proj 3.8e-2 off the float64 result (fusion_bench, which never cuts, was 2.8e-5)."""
    eps, top = torch.finfo(dtype).eps, d[0]
    if d.numel() < 2 or not bool(d[-2] > 4 * eps * top):
        return False
    return bool(d[-1] > 2 * eps * top) and bool(d[-2] > 1024 * eps * top)


# A side whose concatenated basis is at least this many times taller than wide takes its polar
# factor from the float64 Gram matrix (q×q eigh, cost ~2pq² flops) instead of a p×q SVD: on the
# 49152×576 embedding that is a few times cheaper; on square sides the eigh costs as much as the
# SVD, so they keep the SVD.
GRAM_POLAR_ASPECT = 2
# The Gram route leaves the polar factor as X·W with ||W|| = κ(X); float32 products then lose
# ~eps·κ, so it is used only for well-conditioned bases (random task subspaces of a tall side are
# nearly orthogonal, κ ≈ 1-3). Anything worse (and every rank-deficient basis) takes the SVD.
GRAM_POLAR_MAX_COND = 10.0
GRAM_CHUNK_ROWS = 8192  # the float64 Gram is accumulated over row blocks: no float64 copy of X


def polar_factors_fast(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(L, R, deficient) with polar(x) = L R: (x, W) from the Gram route when it applies (see
    GRAM_POLAR_*), else polar_factors' (P, Qᵀ). Both give the same polar factor up to rounding."""
    p, q = x.shape
    if q == 0 or p < GRAM_POLAR_ASPECT * q:
        return polar_factors(x)
    g = torch.zeros(q, q, dtype=torch.float64, device=x.device)
    for i in range(0, p, GRAM_CHUNK_ROWS):
        xc = x[i:i + GRAM_CHUNK_ROWS].double()
        g.addmm_(xc.mT, xc)
    lam, e = torch.linalg.eigh(g)  # ascending
    if not bool(lam[0] > 0) or float(lam[-1] / lam[0]) > GRAM_POLAR_MAX_COND ** 2:
        return polar_factors(x)
    w = (e * lam.rsqrt()) @ e.mT  # (XᵀX)^{-1/2}: polar(X) = X W
    return x, w.to(x.dtype), False


def _rank_tol(x: torch.Tensor, top: torch.Tensor, factor: float = 32.0) -> float:
    # Exact duplicates (or scaled copies) of a task leave the SVD's singular values at rounding
    # level: ≤ 1.06·eps·σ_max measured (24×18 … 1536×576 bases). A random square basis (T·k = r,
    # e.g. T = 3, r = 576) has σ_min ~ σ_max/n but now and then far less: one SmolLM2-shaped
    # down_proj gave 13·eps·σ_max, which the former 32·eps cut, dropping a real direction (3.8e-2
    # off the float64 result). polar_factors uses 4·eps, between the two (float32 data cannot
    # tell a copy from a direction below ~eps); the eigh whitening (σ from √λ) keeps 32·eps.
    return float(factor * torch.finfo(x.dtype).eps * top)


def singular_task_interference(u_hat: torch.Tensor, s_hat: torch.Tensor, v_hat: torch.Tensor) -> float:
    """STI = ||(ÛᵀÛ − I) Σ̂ (V̂ᵀV̂ − I)||₁ (entry-wise), spec §3.11."""
    eye = torch.eye(u_hat.shape[1], dtype=u_hat.dtype, device=u_hat.device)
    left = u_hat.mT @ u_hat - eye
    right = v_hat.mT @ v_hat - eye
    return float(((left * s_hat) @ right).abs().sum())


@dataclass
class SpectralResult:
    merged: torch.Tensor  # the merged task matrix (not yet scaled by alpha)
    deficient: bool  # a polar factor was rank-deficient (partial isometry used)
    sti: float | None = None  # singular task interference of the basis, when asked for
    sti_rel: float | None = None  # STI / ||Σ̂||₁


def spectral_merge(deltas: list[torch.Tensor], basis: int, keep: int, coeffs: list[float],
                   opts: SVDOptions = SVDOptions(), orthogonalizer: str = "svd", name: str = "",
                   with_sti: bool = False) -> SpectralResult:
    """U⊥ diag(ŝ) V⊥ᵀ: `basis` singular vectors of every task span the orthogonalised basis, the
    first `keep` ≤ basis of them carry mass c_t·σ (the rest shape the basis only), spec §4.3.

    TSVM is basis = keep = ⌊r/T⌋, c_t = 1.
    """
    us, vs, ss = [], [], []
    for t, d in enumerate(deltas):
        u, s, v = top_svd(d, basis, opts, name=f"{name}\0{t}")
        mass = s.clone()
        mass[keep:] = 0
        us.append(u)
        vs.append(v)
        ss.append(mass * coeffs[t])
    u_hat, v_hat, s_hat = torch.cat(us, 1), torch.cat(vs, 1), torch.cat(ss)
    if orthogonalizer == "svd":
        # polar(Û) = P_u Q_uᵀ and polar(V̂) = P_v Q_vᵀ are never formed: the merge is
        # P_u [(Q_uᵀ diag(ŝ) Q_v) P_vᵀ], one product with the long side m instead of two.
        # A tall, well-conditioned side gives polar = X·W instead (polar_factors_fast); the
        # same product shape: L_u [(R_u diag(ŝ) R_vᵀ) L_vᵀ].
        pu, qhu, def_u = polar_factors_fast(u_hat)
        pv, qhv, def_v = polar_factors_fast(v_hat)
        merged = pu @ (((qhu * s_hat) @ qhv.mT) @ pv.mT)
    else:
        u_perp, def_u = polar(u_hat, orthogonalizer)
        v_perp, def_v = polar(v_hat, orthogonalizer)
        merged = (u_perp * s_hat) @ v_perp.mT
    if def_u or def_v:
        warnings.warn(f"{name}: the task singular bases are linearly dependent (duplicate or collinear "
                      "candidates?); the polar factor is not unique, using its partial isometry",
                      SpectralWarning, stacklevel=3)
    res = SpectralResult(merged, def_u or def_v)
    if with_sti:
        res.sti = singular_task_interference(u_hat, s_hat, v_hat)
        res.sti_rel = res.sti / max(float(s_hat.abs().sum()), 1e-30)
    return res
