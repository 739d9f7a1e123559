"""Element-wise picks between the base and one model: `arcee_fusion` and `nearswap` (mergekit 0.1.5).

arcee_fusion: importance = |θ - θ_base| · KL(softmax θ ‖ softmax θ_base) along the last axis; the
model's value is taken where importance ≥ median + 1.5·IQR of the importances, the base's elsewhere.
Above 2^20 elements the quartiles come from a 2^20-element sample drawn with the task's seeded
generator (mergekit samples with torch's global generator, so it varies from run to run).
nearswap: weight = clamp(t / |θ - θ_base|, 0, 1); out = weight·θ + (1 - weight)·θ_base.
"""
from __future__ import annotations

import torch

from merging.method import MergeConfigError, Param, TensorTask, register

QUANTILE_SAMPLE = 1 << 20


def _one(name: str):
    def check(params: dict, model_params: list[dict]) -> None:
        if len(model_params) != 1:
            raise MergeConfigError(f"merge_method {name}: takes the base and exactly one other model, "
                                   f"got {len(model_params)} besides the base")
    return check


@register("arcee_fusion", validate=_one("arcee_fusion"))
def arcee_fusion(task: TensorTask) -> torch.Tensor:
    base, model = task.base, task.candidates[0]
    p = torch.softmax(model, dim=-1) + 1e-8
    q = torch.softmax(base, dim=-1) + 1e-8
    importance = (model - base).abs() * (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    flat = importance.reshape(-1)
    if flat.numel() > QUANTILE_SAMPLE:
        gen = task.generator(0, flat.device)
        flat = flat[torch.randint(flat.numel(), (QUANTILE_SAMPLE,), generator=gen, device=flat.device)]
    ordered = torch.sort(flat).values
    q1, median, q3 = (ordered[int(q * (ordered.numel() - 1))] for q in (0.25, 0.5, 0.75))
    mask = (importance >= median + 1.5 * (q3 - q1)).to(base.dtype)
    return base + (model - base) * mask


@register("nearswap", params=[Param("t", float, help="differences below t take the model's value")],
          validate=_one("nearswap"))
def nearswap(task: TensorTask) -> torch.Tensor:
    a, b = task.base, task.candidates[0]
    weight = (task.params["t"] / (a - b).abs().clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * b + (1 - weight) * a
