"""Weight averaging: `linear` (mergekit's, the paper's Weight Average) and `rewarded_soup`."""
from __future__ import annotations

import torch

from merging.method import MergeConfigError, Param, TensorTask, register


def _weighted_sum(task: TensorTask, weights: list[float]) -> torch.Tensor:
    # Model by model in index order: bit-identical to a stacked sum over dim 0, without the stack.
    out = None
    for c, w in zip(task.candidates, weights):
        part = c * torch.tensor(w, dtype=c.dtype, device=c.device)
        out = part if out is None else out.add_(part)
    return out


@register("linear", params=[Param("weight", float, 1.0, per_model=True), Param("normalize", bool, True)],
          needs_base=False, elementwise=True)
def linear(task: TensorTask) -> torch.Tensor:
    """θ = Σ wᵢθᵢ, divided by Σ wᵢ when `normalize` (equal weights: the plain average)."""
    weights = task.per_model("weight")
    out = _weighted_sum(task, weights)
    if task.params["normalize"]:
        out.div_(torch.tensor(weights, dtype=out.dtype, device=out.device).sum())  # out is our own sum
    return out


def _simplex(params: dict, model_params: list[dict]) -> None:
    lam = [p["weight"] for p in model_params]
    if any(x < 0 for x in lam):
        raise MergeConfigError(f"merge_method rewarded_soup: preference weights must be >= 0, got {lam}")
    if sum(lam) <= 0:
        raise MergeConfigError(f"merge_method rewarded_soup: preference weights sum to 0: {lam}")


@register("rewarded_soup", params=[Param("weight", float, 1.0, per_model=True,
                                         help="preference λᵢ; normalised to sum 1")],
          needs_base=False, validate=_simplex, elementwise=True)
def rewarded_soup(task: TensorTask) -> torch.Tensor:
    """θ = Σ λᵢθᵢ with λ a preference vector on the simplex (normalised to sum 1)."""
    lam = task.per_model("weight")
    total = sum(lam)
    return _weighted_sum(task, [x / total for x in lam])
