"""Building blocks shared by the task-vector methods: sparsifiers and the TIES / sum combination.

Formulas: shared/spec/merging-methods.md. Magnitude selection uses k-th value thresholds
(`torch.kthvalue`, linear time) rather than a full sort, and breaks ties at a threshold by tensor
index so exactly the requested number of entries is kept, deterministically.
"""
from __future__ import annotations

import torch

from merging.method import TensorTask

RESCALES = ("l1", "inverse_p", "none")
RESCALE_ALIASES = ((True, "l1"), (False, "none"))  # mergekit's `rescale: true|false`


def rank_window(w: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Boolean mask of the entries of 1-D `w` whose ascending rank is in [start, stop).

    Rank = position in a stable ascending sort (equal values ordered by index); computed with two
    k-th value lookups and a count, never a full sort.
    """
    n = w.numel()
    start, stop = max(0, start), min(n, stop)
    mask = torch.zeros(n, dtype=torch.bool, device=w.device)
    if start >= stop:
        return mask
    if start == 0 and stop == n:
        return ~mask
    if stop == n:  # the top n - start: one k-th value, ties at it filled from the end (stable order)
        lo = w.kthvalue(start + 1).values
        mask = w > lo
        need = (n - start) - int(mask.sum())
        if need:
            mask[(w == lo).nonzero().view(-1)[-need:]] = True
        return mask
    lo = w.kthvalue(start + 1).values if start > 0 else w.min()
    hi = w.kthvalue(stop).values if stop < n else w.max()
    mask = (w > lo) & (w < hi)
    for v in ((lo,) if bool(lo == hi) else (lo, hi)):
        first = int((w < v).sum())  # sorted position of the first entry equal to v
        eq = (w == v).nonzero().view(-1)  # in index order = their order in a stable sort
        pos = first + torch.arange(eq.numel(), device=w.device)
        mask[eq[(pos >= start) & (pos < stop)]] = True
    return mask


def magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES trim: keep the k = max(1, int(d·n)) entries of largest |δ|."""
    if density >= 1:
        return delta
    n = delta.numel()
    k = max(1, int(density * n))
    keep = rank_window(delta.abs().reshape(-1), n - k, n)
    return delta * keep.view(delta.shape)


def crumbs(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Breadcrumbs: drop the n_bot smallest and the n_top largest |δ|, keep `target` in between."""
    if density >= 1:
        return delta
    n = delta.numel()
    target, n_top = int(density * n), int(gamma * n)
    n_bot = max(0, n - target - n_top)
    keep = rank_window(delta.abs().reshape(-1), n_bot, n_bot + target)
    return delta * keep.view(delta.shape)


def _uniform(task: TensorTask, i: int, like: torch.Tensor) -> torch.Tensor:
    # Drawn on the CPU with a per-(seed, tensor, model) generator: identical on any device/threads.
    u = torch.rand(like.shape, generator=task.generator(i), dtype=torch.float32)
    return u.to(like.device)


def rescaled(delta: torch.Tensor, kept: torch.Tensor, rescale: str, p) -> torch.Tensor:
    """Apply the mask, then restore scale: l1 (keep ‖δ‖₁), inverse_p (÷ keep probability) or none."""
    out = delta * kept
    if rescale == "l1":
        before, after = delta.abs().sum(dtype=torch.float64), out.abs().sum(dtype=torch.float64)
        if before >= 1e-7 and after >= 1e-7:
            out = out * (before / after).to(torch.float32)
    elif rescale == "inverse_p":
        out = out / p
    return out


def drop(task: TensorTask, i: int, delta: torch.Tensor, density: float, rescale: str) -> torch.Tensor:
    """DARE: keep each entry with probability d, then rescale."""
    if density >= 1:
        return delta
    kept = _uniform(task, i, delta) < density
    return rescaled(delta, kept, rescale, density)


def magprune(task: TensorTask, i: int, delta: torch.Tensor, density: float, epsilon: float,
             rescale: str) -> torch.Tensor:
    """DELLA: keep probability grows linearly with the magnitude rank of |δ| within its row."""
    if density >= 1:
        return delta
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    n = rows.shape[1]
    rank = magnitude_ranks(rows)
    # ρ = (r - min r)/(max r - min r) with ranks a permutation of 1..n; a single entry gets ρ = 1/2.
    rho = rank.to(torch.float32) / (n - 1) if n > 1 else torch.full_like(rows, 0.5)
    p = (density - epsilon) + 2 * epsilon * rho
    kept = _uniform(task, i, rows) < p
    return rescaled(rows, kept, rescale, p).view(delta.shape)


def magnitude_ranks(rows: torch.Tensor) -> torch.Tensor:
    """Rank of each |x| within its row in a stable ascending sort (equal values ordered by index).

    On the CPU the sort runs on unique int64 keys (|x|'s float32 bits, which order non-negative
    floats like their values, then the column index) with numpy's SIMD sort: the same ranks as
    torch's stable argsort, 3-4x faster (bench/README.md, "Merging"). Other devices use argsort.
    """
    n = rows.shape[1]
    if rows.device.type == "cpu" and rows.dtype == torch.float32 and n > 1:
        import numpy as np

        shift = (n - 1).bit_length()  # 31 value bits + shift index bits fit an int64 for n < 2**32
        keys = rows.abs().view(torch.int32).numpy().astype(np.int64)
        keys <<= shift
        keys |= np.arange(n, dtype=np.int64)
        keys.sort(axis=1)
        keys &= (1 << shift) - 1  # the column indices in sorted order: the stable argsort
        order = torch.from_numpy(keys)
    else:
        order = rows.abs().argsort(dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=rows.device).expand_as(order))
    return rank


def combine(task: TensorTask, deltas: list[torch.Tensor], *, sign_election: bool, normalize: bool,
            unweighted_election: bool = False) -> torch.Tensor:
    """θ = θ₀ + λΔ with Δ the (optionally sign-elected, optionally normalised) weighted sum.

    `deltas` must be fresh tensors the caller does not reuse: they are weighted in place.
    Sums run model by model in index order: bit-identical to summing a stacked tensor over its
    first dimension (what mergekit does) without materialising the stack.
    """
    weights = task.per_model("weight")
    if unweighted_election:
        tau = [d * w for d, w in zip(deltas, weights)]
    else:  # the sparsified deltas are this call's own temporaries: weight them in place
        tau = [d.mul_(w) if w != 1 else d for d, w in zip(deltas, weights)]
    if sign_election:
        basis = deltas if unweighted_election else tau
        # The elected sign as a bool (True: +). An entry agrees when its strict sign is the elected
        # one, so zeros never agree: the same as sign(b) == elected sign, without float sign tensors.
        positive = _ordered_sum(basis, inplace=False) >= 0
        mixed, divisor = None, None
        for b, t, w in zip(basis, tau, weights):
            agree = torch.where(positive, b > 0, b < 0).to(t.dtype)  # float masks multiply fastest
            part = t.mul_(agree)  # t is ours, and b's last use was the line above (b is t when weighted)
            mixed = part if mixed is None else mixed.add_(part)
            if normalize:
                share = agree if (unweighted_election or w == 1) else agree.mul_(w)
                divisor = share if divisor is None else divisor.add_(share)
        if normalize:
            mixed.div_(divisor.masked_fill_(divisor == 0, 1))
    else:
        mixed = _ordered_sum(tau)
        if normalize:
            total = float(sum(weights))
            mixed.div_(total if abs(total) >= 1e-8 else 1.0)
    lam = task.params["lambda"]
    if lam != 1:
        mixed.mul_(lam)
    # mixed is this call's own buffer (the first task vector's), so the result goes into it:
    # one float32 tensor fewer at the peak, and base + mixed == mixed + base exactly.
    return mixed.add_(task.base)


def _ordered_sum(parts: list[torch.Tensor], inplace: bool = True) -> torch.Tensor:
    out = parts[0] if inplace else parts[0].clone()  # in place: parts[0] is a temporary of combine's
    for p in parts[1:]:
        out += p
    return out

def gta_params(normalize: bool, *extra, sign_election: bool = False) -> list:
    """Parameters every task-vector method takes (names and defaults as mergekit 0.1.5)."""
    from merging.method import Param

    params = [
        Param("weight", float, 1.0, per_model=True, help="wᵢ, the task vector's weight"),
        Param("lambda", float, 1.0, help="scale of the merged task vector"),
        Param("normalize", bool, normalize, help="divide by the (agreeing) weights' sum"),
        Param("int8_mask", bool, False, help="mergekit memory option; accepted, no effect (float32 masks)"),
    ]
    if sign_election:
        params.append(Param("sign_election", str, "weighted", choices=("weighted", "unweighted"),
                            help="weighted: mergekit; unweighted: the TIES paper (elect on δ̃, disjoint mean)"))
    return params + list(extra)


def density_param(default: float = 1.0):
    from merging.method import Param

    return Param("density", float, default, per_model=True, help="fraction of entries kept")


def rescale_param():
    from merging.method import Param

    return Param("rescale", str, "l1", choices=RESCALES, aliases=RESCALE_ALIASES,
                 help="l1 (mergekit >= Feb 2025), inverse_p (the papers), none")


def check_unit_interval(method: str, name: str = "density"):
    """A validate hook: every model's `name` in (0, 1] (density 0 would zero the task vector)."""
    from merging.method import MergeConfigError

    def validate(params: dict, model_params: list[dict]) -> None:
        for i, mp in enumerate(model_params):
            v = mp.get(name, params.get(name))
            if v is not None and not 0 < v <= 1:
                raise MergeConfigError(f"merge_method {method}, models[{i}]: {name} must be in (0, 1], got {v}")
    return validate


def each(deltas: list[torch.Tensor], fn) -> list[torch.Tensor]:
    """Replace deltas[i] by fn(i, deltas[i]) one at a time, so the unsparsified one is freed early."""
    for i in range(len(deltas)):
        deltas[i] = fn(i, deltas[i])
    return deltas
