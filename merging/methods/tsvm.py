"""TSVM — Task Singular Vectors: Merging (Gargiulo et al., CVPR 2025), exactly as spec rtsvm.md §3.

Per 2-D tensor: the top ⌊r/T⌋ singular triplets of every task matrix, the polar factors of the
concatenated U and V blocks, the tasks' own singular values; every other tensor (and every key
matched by `exclude_keys`) takes the mean task vector. `alpha` scales the whole merged delta.
The plumbing shared with R-TSVM (options, the vector path, input checks) lives here too.
"""
from __future__ import annotations

import fnmatch
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from merging.method import MergeConfigError, Param, TensorTask, register
from merging.svd import COMPUTE_DTYPES, ORTHOGONALIZERS, SVD_DRIVERS, SpectralWarning, SVDOptions, spectral_merge


@dataclass(frozen=True)
class CheckedParam(Param):
    """A Param with a value check (range, pattern list) whose error names the option."""

    check: Callable[[Any], Any] | None = None  # returns the normalised value or raises ValueError

    def coerce(self, value: Any, where: str) -> Any:
        if value is None and self.default is None:
            return None
        if self.type is tuple:  # a list of glob patterns: one string or a list of strings
            if isinstance(value, str):
                value = (value,)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise MergeConfigError(f"{where}: parameter {self.name!r} must be a glob pattern or a "
                                       f"list of glob patterns, got {value!r}")
            return tuple(value)
        value = super().coerce(value, where)
        if self.check is not None:
            try:
                self.check(value)
            except ValueError as exc:
                raise MergeConfigError(f"{where}: parameter {self.name!r} {exc}, got {value!r}") from None
        return value


def _at_least(lo: float, strict: bool = False):
    def check(v):
        if not math.isfinite(v) or (v <= lo if strict else v < lo):
            raise ValueError(f"must be {'>' if strict else '>='} {lo}")
    return check


def _finite(v):
    if not math.isfinite(v):
        raise ValueError("must be finite")


# Options every spectral method takes. `svd_driver` picks how the top-k triplets are found.
COMMON_PARAMS = [
    CheckedParam("alpha", float, 1.0, check=_finite, help="scales the whole merged task vector"),
    CheckedParam("exclude_keys", tuple, (), help="glob patterns of 2-D keys merged like vectors"),
    Param("nonmatrix_merge", str, "mean", choices=("mean", "sum"), help="vectors: mean or sum of deltas"),
    Param("orthogonalizer", str, "svd", choices=ORTHOGONALIZERS, help="polar factor via SVD or eigh whitening"),
    Param("svd_driver", str, "exact", choices=SVD_DRIVERS, help="exact SVD, or a faster top-k driver"),
    CheckedParam("oversample", int, None, check=_at_least(0),
                 help="randomized driver: extra sketch columns (default: k, a sketch of 2k)"),
    CheckedParam("power_iters", int, 2, check=_at_least(0), help="randomized driver: power iterations"),
    Param("compute_dtype", str, "float32", choices=tuple(COMPUTE_DTYPES), help="dtype of the SVDs"),
]


def svd_options(params: dict, seed: int = 0) -> SVDOptions:
    return SVDOptions(params["svd_driver"], params["oversample"], params["power_iters"],
                      params["compute_dtype"], seed)


def check_inputs(task: TensorTask) -> None:
    """Non-finite values would silently poison every SVD; refuse them by name."""
    for label, x in [("base", task.base), *((f"candidate {i}", c) for i, c in enumerate(task.candidates))]:
        if x is not None and x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{task.name}: {label} has non-finite values (nan/inf); refusing to merge")


def is_spectral(name: str, shape: torch.Size, exclude_keys: tuple) -> bool:
    return len(shape) == 2 and not any(fnmatch.fnmatchcase(name, p) for p in exclude_keys)


class LazyDeltas:
    """Task vectors w_t·(θ_t − θ_0) in the compute dtype, made one at a time when asked for.

    The spectral path needs each Δ_t only for its own SVD (and its statistics), so holding all T
    of them would multiply a tensor's peak memory by T for nothing; recomputing is O(mn).
    """

    def __init__(self, task: TensorTask, dtype: torch.dtype, weights: list[float] | None = None):
        self.base, self.cands, self.dtype = task.base, task.candidates, dtype
        self.weights = weights or [1.0] * len(task.candidates)
        self.shape = task.base.shape

    def __len__(self) -> int:
        return len(self.cands)

    def __getitem__(self, t: int) -> torch.Tensor:
        if not -len(self) <= t < len(self):
            raise IndexError(t)
        d = self.cands[t].to(self.dtype) - self.base.to(self.dtype)
        return d if self.weights[t] == 1.0 else d * self.weights[t]

    def __iter__(self):
        return (self[t] for t in range(len(self)))


def vector_merge(deltas, how: str) -> torch.Tensor:
    total = None
    for d in deltas:
        total = d if total is None else total.add_(d)
    return total / len(deltas) if how == "mean" else total


def finish(task: TensorTask, merged: torch.Tensor, alpha: float) -> torch.Tensor:
    return (task.base.to(merged.dtype) + alpha * merged).to(task.base.dtype)


def record(task: TensorTask, **values) -> None:
    """Hand per-tensor facts to the engine's diagnostics collector, when it asked for them by
    putting a dict under task.state["diagnostics"]."""
    sink = task.state.get("diagnostics") if isinstance(task.state, dict) else None
    if isinstance(sink, dict):
        sink[task.name] = values


def rank_too_small(task: TensorTask, r: int, k: int) -> bool:
    if k >= 1:
        return False
    warnings.warn(f"{task.name}: rank {r} < {len(task.candidates)} candidates gives a per-task rank of 0; "
                  "merging this tensor as the mean task vector instead", SpectralWarning, stacklevel=3)
    return True


@register("tsvm", params=[*COMMON_PARAMS,
                          Param("weight", float, 1.0, per_model=True,
                                help="scales this task vector before the SVD (fusion_bench's alpha list)")],
          needs_base=True, min_models=1)
def tsvm(task: TensorTask) -> torch.Tensor:
    check_inputs(task)
    p = task.params
    dtype = COMPUTE_DTYPES[p["compute_dtype"]]
    deltas = LazyDeltas(task, dtype, task.per_model("weight"))
    T = len(deltas)
    if is_spectral(task.name, task.base.shape, p["exclude_keys"]):
        r = min(task.base.shape)
        k = r // T  # = int(r * (1/T)) of the reference code
        if not rank_too_small(task, r, k):
            want = isinstance(task.state, dict) and isinstance(task.state.get("diagnostics"), dict)
            res = spectral_merge(deltas, k, k, [1.0] * T, svd_options(p, task.seed), p["orthogonalizer"],
                                 task.name, with_sti=want)
            record(task, method="tsvm", k_base=k, k_l=k, sti=res.sti, sti_rel=res.sti_rel,
                   deficient=res.deficient)
            return finish(task, res.merged, p["alpha"])
    return finish(task, vector_merge(deltas, p["nonmatrix_merge"]), p["alpha"])
