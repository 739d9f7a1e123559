"""Task Arithmetic: θ = θ₀ + λ Σ wᵢδᵢ."""
from __future__ import annotations

import torch

from merging.method import TensorTask, register
from merging.ops import combine, gta_params


@register("task_arithmetic", params=gta_params(False), elementwise=True)
def task_arithmetic(task: TensorTask) -> torch.Tensor:
    return combine(task, task.take_deltas(), sign_election=False, normalize=task.params["normalize"])
