"""Weight averaging: `linear` (mergekit's, the paper's Weight Average) and `rewarded_soup`."""
from __future__ import annotations

import torch

from merging.method import MergeConfigError, Param, TensorTask, register


def _weighted_sum(task: TensorTask, weights: list[float]) -> torch.Tensor:
    # Model by model in index order: bit-identical to a stacked sum over dim 0, without the stack.
    # The engine's own float32 copies (consumable) are scaled in place; w = 1 skips the product
    # (x·1 = x exactly), and the first term is then the engine's buffer itself.
    out = None
    for c, w in zip(task.candidates, weights):
        if w != 1:
            scale = torch.tensor(w, dtype=c.dtype, device=c.device)
            part = c.mul_(scale) if task.consumable else c * scale
        else:
            part = c if (task.consumable or out is not None) else c.clone()
        out = part if out is None else out.add_(part)
    if task.consumable:
        task.candidates = [None] * len(task.candidates)  # consumed: the first is now the sum
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
