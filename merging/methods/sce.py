"""`sce`: Select, Calculate, Erase (FuseChat 2, arXiv:2408.07990), as mergekit 0.1.5 defines it.

Select: keep the `select_topk` fraction of elements where the task vectors vary most across models
(variance over models, among elements with non-zero variance). Calculate: weight each task vector by
its mean square, normalised to sum 1. Erase: drop entries whose sign disagrees with the sign of the
summed task vectors. Merge: base + Σ wᵢ·mᵢ·δᵢ / Σ wᵢ·mᵢ.
"""
from __future__ import annotations

import torch

from merging.method import MergeConfigError, Param, TensorTask, register


def _fraction(params: dict, model_params: list[dict]) -> None:
    if not 0.0 <= params["select_topk"] <= 1.0:
        raise MergeConfigError(f"merge_method sce: select_topk must be in [0, 1], got {params['select_topk']}")


@register("sce", params=[Param("select_topk", float, 1.0, help="fraction of highest-variance elements kept")],
          validate=_fraction)
def sce(task: TensorTask) -> torch.Tensor:
    base = task.base
    if not task.candidates:
        return base
    deltas = torch.stack(task.deltas())
    k_frac = task.params["select_topk"]
    if k_frac < 1:
        var = torch.var(deltas, dim=0, unbiased=False)
        k = int(torch.count_nonzero(var) * k_frac) if k_frac > 0 else 0
        mask = torch.zeros_like(var)
        if k:
            mask.view(-1)[torch.topk(var.abs().view(-1), k=k, largest=True).indices] = 1
        deltas = deltas * mask.unsqueeze(0)
    majority = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
    keep = (deltas.sign() == majority).to(deltas.dtype)
    weights = deltas.square().reshape(deltas.shape[0], -1).mean(dim=1)
    total = weights.sum().item()
    weights = torch.full_like(weights, 1 / len(weights)) if abs(total) < 1e-6 else weights / total
    w = weights.view(-1, *([1] * (deltas.dim() - 1))) * keep
    return base + (deltas * w).sum(dim=0) / w.sum(dim=0).clamp(min=1e-6)
