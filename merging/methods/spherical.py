"""Interpolation on the sphere beyond two-model slerp: `nuslerp`, `multislerp`, `karcher`.

As mergekit 0.1.5 defines them. With a base (nuslerp, multislerp), the task vectors θᵢ - θ_base
are interpolated and the base added back; without one, the weights themselves.
"""
from __future__ import annotations

import torch

from merging.method import MergeConfigError, Param, TensorTask, register


def _two(params: dict, model_params: list[dict]) -> None:
    if len(model_params) != 2:
        raise MergeConfigError(f"merge_method nuslerp: interpolates exactly two models (besides an optional base), "
                               f"got {len(model_params)}")


def _nuslerp(t: float, v0: torch.Tensor, v1: torch.Tensor, *, flatten: bool, row_wise: bool,
             eps: float = 1e-8) -> torch.Tensor:
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:  # rows of the leading axis (mergekit transposes dim 0 to the end)
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    u0 = v0 / torch.linalg.vector_norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.linalg.vector_norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (u0 * u1).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps ** 2
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    out = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    out = torch.where(colinear, (1 - t) * v0 + t * v1, out)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


@register("nuslerp", params=[Param("weight", float, per_model=True, help="t = w₂/(w₁+w₂)"),
                             Param("nuslerp_flatten", bool, True, help="one angle for the whole tensor"),
                             Param("nuslerp_row_wise", bool, False, help="else one angle per row")],
          needs_base=False, optional_base=True, validate=_two)
def nuslerp(task: TensorTask) -> torch.Tensor:
    w = task.per_model("weight")
    t = 0.5 if abs(sum(w)) < 1e-6 else w[1] / sum(w)
    a, b = task.candidates
    kw = dict(flatten=task.params["nuslerp_flatten"], row_wise=task.params["nuslerp_row_wise"])
    if task.base is None:
        return _nuslerp(t, a, b, **kw)
    return task.base + _nuslerp(t, a - task.base, b - task.base, **kw)


@register("multislerp", params=[Param("weight", float, per_model=True),
                                Param("normalize_weights", bool, True), Param("eps", float, 1e-8)],
          needs_base=False, optional_base=True)
def multislerp(task: TensorTask) -> torch.Tensor:
    """Barycentric interpolation on the hypersphere: project the unit vectors onto the tangent
    space at their weighted mean direction, average there, map back; scale by the weighted norm."""
    if len(task.candidates) == 1:
        return task.candidates[0]
    eps = task.params["eps"]
    vs = torch.stack(task.candidates if task.base is None else [c - task.base for c in task.candidates])
    flat = vs.reshape(vs.shape[0], -1)
    w = torch.tensor(task.per_model("weight"), dtype=vs.dtype, device=vs.device)
    if task.params["normalize_weights"]:
        w = w / w.sum()
    norms = torch.linalg.vector_norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.linalg.vector_norm(mean)
    if mean_norm < eps:
        if vs.shape[0] != 2:
            raise MergeConfigError(f"multislerp: tensor {task.name!r}: the weighted directions cancel out "
                                   "(antipodal inputs with balancing weights); use other weights")
        out = vs[0] * w[0] + vs[1] * w[1]
    else:
        mean = mean / mean_norm
        tangent = ((units - (units * mean).sum(-1, keepdim=True) * mean) * w.view(-1, 1)).sum(0)
        tn = torch.linalg.vector_norm(tangent) + eps
        out = ((mean * torch.cos(tn) + tangent * (torch.sin(tn) / tn)) * (norms.squeeze(-1) * w).sum())
        out = out.view(vs.shape[1:])
    return out if task.base is None else out + task.base


@register("karcher", params=[Param("max_iter", int, 10), Param("tol", float, 1e-5)], needs_base=False)
def karcher(task: TensorTask) -> torch.Tensor:
    """The equal-weight Karcher (Riemannian) mean of the directions, scaled by the mean norm."""
    xs = task.candidates
    if len(xs) == 1:
        return xs[0]
    tol, alphas = task.params["tol"], [1.0 / len(xs)] * len(xs)
    norms = [torch.linalg.vector_norm(x) for x in xs]
    units = [torch.zeros_like(x) if n.item() == 0.0 else x / n for x, n in zip(xs, norms)]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return torch.zeros_like(xs[0])
    a = [alphas[i] / sum(alphas[i] for i in valid) for i in valid]
    us = [units[i] for i in valid]
    mean = sum(ai * u for ai, u in zip(a, us))
    mn = torch.linalg.vector_norm(mean)
    mean = us[0].clone() if mn.item() < tol else mean / mn
    for _ in range(task.params["max_iter"]):
        tangent = torch.zeros_like(mean)
        for ai, u in zip(a, us):
            dot = torch.clamp(torch.dot(mean.flatten(), u.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += ai * (theta / torch.sin(theta)) * (u - dot * mean)
        tn = torch.linalg.vector_norm(tangent)
        if tn.item() < tol:
            break
        mean = torch.cos(tn) * mean + torch.sin(tn) * (tangent / tn)
        un = torch.linalg.vector_norm(mean)
        if un.item() > tol:
            mean = mean / un
    return sum(ai * n for ai, n in zip(alphas, norms)) * mean


