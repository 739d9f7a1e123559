"""TIES: trim each task vector to its largest-magnitude entries, elect a sign, merge the agreeing ones.

`topk_scope: tensor` (mergekit) trims per tensor. `topk_scope: model` (the TIES paper) uses one
magnitude threshold per candidate over the whole model, found exactly by a streaming prepass: two
16-bit histograms of the float32 bit patterns of |δ| (non-negative floats sort like their bits).
Entries tied at the threshold are kept as a stable ascending sort over the model would keep them
(the last in tensor-name, then index, order), up to exactly k — the same rule as per tensor.
"""
from __future__ import annotations

import torch

from merging.method import Param, TensorTask, register
from merging.ops import check_unit_interval, combine, density_param, each, gta_params, magnitude

_BINS = 1 << 16


def _bits(d: torch.Tensor) -> torch.Tensor:
    return d.abs().reshape(-1).cpu().view(torch.int32).to(torch.int64)  # sign bit is 0: 0 .. 0x7F800000


def _select(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """The bin holding the k-th largest count-weighted value, and how many lie strictly above it."""
    above = hist.flip(0).cumsum(0)  # above[j] = count in the top j+1 bins
    j = int(torch.searchsorted(above, torch.tensor(k)))
    b = hist.numel() - 1 - j
    return b, int(above[j] - hist[b])


def model_thresholds(stream) -> dict:
    if stream.params.get("topk_scope") != "model":
        return {}
    densities = [mp["density"] for mp in stream.model_params]
    active = [i for i, d in enumerate(densities) if d < 1]
    if not active:
        return {}
    hi = {i: torch.zeros(_BINS, dtype=torch.int64) for i in active}
    total = 0
    for task in stream:  # pass 1: high 16 bits
        for i, d in enumerate(task.deltas()):
            if i in hi:
                hi[i] += torch.bincount(_bits(d) >> 16, minlength=_BINS)
        total += task.base.numel()
    ks = {i: max(1, int(densities[i] * total)) for i in active}
    chosen = {i: _select(hi[i], ks[i]) for i in active}
    lo = {i: torch.zeros(_BINS, dtype=torch.int64) for i in active}
    per_tensor: dict[str, dict[int, torch.Tensor]] = {}
    for task in stream:  # pass 2: low 16 bits inside the chosen high bin
        for i, d in enumerate(task.deltas()):
            if i not in lo:
                continue
            bits = _bits(d)
            inside = bits[(bits >> 16) == chosen[i][0]] & 0xFFFF
            h = torch.bincount(inside, minlength=_BINS)
            lo[i] += h
            if inside.numel():
                per_tensor.setdefault(task.name, {})[i] = h.to_sparse()
    thresholds, quotas = {}, {}
    for i in active:
        b_hi, above_hi = chosen[i]
        b_lo, above_lo = _select(lo[i], ks[i] - above_hi)
        bits = (b_hi << 16) | b_lo
        thresholds[i] = torch.tensor([bits], dtype=torch.int32).view(torch.float32).item()
        need = ks[i] - above_hi - above_lo  # entries equal to the threshold still to keep
        for name in sorted(per_tensor, reverse=True):
            h = per_tensor[name].get(i)
            ties = int(h.to_dense()[b_lo]) if h is not None else 0
            take = min(ties, need)
            quotas.setdefault(name, {})[i] = take
            need -= take
    return {"ties_threshold": thresholds, "ties_quota": quotas}


def _trim_model_scope(task: TensorTask, i: int, delta: torch.Tensor) -> torch.Tensor:
    t = task.state["ties_threshold"][i]
    a = delta.abs().reshape(-1)
    keep = a > t
    quota = task.state["ties_quota"].get(task.name, {}).get(i, 0)
    if quota:
        keep[(a == t).nonzero().view(-1)[-quota:]] = True
    return delta.mul_(keep.view(delta.shape))  # in place: `delta` is the caller's temporary


@register("ties", params=gta_params(True, density_param(), sign_election=True) + [
    Param("topk_scope", str, "tensor", choices=("tensor", "model"),
          help="tensor: one threshold per tensor (mergekit); model: per candidate over the model (paper)")],
    prepass=model_thresholds, validate=check_unit_interval("ties"))
def ties(task: TensorTask) -> torch.Tensor:
    dens = task.per_model("density")
    model_scope = task.params["topk_scope"] == "model"
    trimmed = each(task.take_deltas(), lambda i, d: _trim_model_scope(task, i, d) if model_scope and dens[i] < 1
                   else magnitude(d, dens[i]))
    return combine(task, trimmed, sign_election=True, normalize=task.params["normalize"],
                   unweighted_election=task.params["sign_election"] == "unweighted")
