"""`slerp`: spherical interpolation between the base and one model (mergekit 0.1.5's definition).

Each tensor, flattened, is interpolated on a great circle: with a = the base's values, b = the
model's, θ the angle between them,
    out = sin((1-t)θ)/sin θ · a + sin(tθ)/sin θ · b,
and (anti)parallel tensors (|cos θ| > dot_threshold) fall back to (1-t)·a + t·b. Norms at or below
eps count as 1; the result is not renormalised. `t` is usually a
gradient over layers with filters per module, e.g. t: [{filter: self_attn, value: [0, 0.5, 1]},
{value: 0.5}] (merging/settings.py).
"""
from __future__ import annotations

import math

import torch

from merging.method import MergeConfigError, Param, TensorTask, register


def _one_model(params: dict, model_params: list[dict]) -> None:
    if len(model_params) != 1:
        raise MergeConfigError(f"merge_method slerp: interpolates the base and exactly one other model, "
                               f"got {len(model_params)} besides the base")


@register("slerp", params=[Param("t", float, help="0 = the base, 1 = the other model"),
                           Param("dot_threshold", float, 0.9995, help="rows more parallel than this interpolate "
                                                                      "linearly"),
                           Param("eps", float, 1e-8, help="a row norm at or below this counts as 1")],
          validate=_one_model)
def slerp(task: TensorTask) -> torch.Tensor:
    t, eps = task.params["t"], task.params["eps"]
    a, b = task.base, task.candidates[0]
    norm_a, norm_b = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    norm_a = norm_a if norm_a > eps else torch.ones_like(norm_a)
    norm_b = norm_b if norm_b > eps else torch.ones_like(norm_b)
    # float64 for the angle: cos θ of near-parallel tensors sets whether they interpolate linearly.
    dot = float(((a / norm_a) * (b / norm_b)).sum(dtype=torch.float64).clamp(-1, 1))
    if abs(dot) > task.params["dot_threshold"]:
        return (1 - t) * a + t * b
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    return (math.sin((1 - t) * theta) / sin_theta) * a + (math.sin(t * theta) / sin_theta) * b
