"""Model Stock: interpolate between the base and the candidates' average by their task vectors' angle."""
from __future__ import annotations

import torch

from merging.method import Param, TensorTask, register


@register("model_stock", params=[
    Param("filter_wise", bool, False, help="one ratio per row instead of per tensor"),
    Param("cos_average", str, "cosine", choices=("cosine", "angle"),
          help="cosine: mean pairwise cosine (mergekit); angle: cosine of the mean pairwise angle"),
], min_models=2)
def model_stock(task: TensorTask) -> torch.Tensor:
    base, n = task.base, len(task.candidates)
    shape = base.shape
    rows = (lambda t: t.reshape(t.shape[0], -1)) if task.params["filter_wise"] and base.dim() >= 2 \
        else (lambda t: t.reshape(1, -1))
    deltas = [rows(d).to(torch.float64) for d in task.deltas()]
    norms = [d.norm(dim=1) for d in deltas]
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            cos = (deltas[i] * deltas[j]).sum(dim=1) / (norms[i] * norms[j]).clamp(min=1e-6)
            pairs.append(cos.clamp(-1, 1))
    stacked = torch.stack(pairs)
    cos = stacked.arccos().mean(dim=0).cos() if task.params["cos_average"] == "angle" else stacked.mean(dim=0)
    denom = 1 + (n - 1) * cos
    degenerate = denom.abs() < 1e-6
    t = torch.where(degenerate, torch.zeros_like(cos), n * cos / torch.where(degenerate, torch.ones_like(denom), denom))
    t = t.to(torch.float32).unsqueeze(1)
    avg = sum(task.candidates) / n
    out = t * rows(avg) + (1 - t) * rows(base)
    return out.reshape(shape)
