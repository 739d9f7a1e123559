"""DARE: drop each task-vector entry with probability 1 - d, rescale; optionally TIES sign election."""
from __future__ import annotations

import torch

from merging.method import TensorTask, register
from merging.ops import check_unit_interval, combine, density_param, drop, each, gta_params, rescale_param

_PARAMS = [density_param(), rescale_param()]


def _dropped(task: TensorTask) -> list[torch.Tensor]:
    rescale = task.params["rescale"]
    dens = task.per_model("density")
    return each(task.take_deltas(), lambda i, d: drop(task, i, d, dens[i], rescale))


@register("dare_linear", params=gta_params(False, *_PARAMS), validate=check_unit_interval("dare_linear"))
def dare_linear(task: TensorTask) -> torch.Tensor:
    return combine(task, _dropped(task), sign_election=False, normalize=task.params["normalize"])


@register("dare_ties", params=gta_params(False, *_PARAMS, sign_election=True),
          validate=check_unit_interval("dare_ties"))
def dare_ties(task: TensorTask) -> torch.Tensor:
    return combine(task, _dropped(task), sign_election=True, normalize=task.params["normalize"],
                   unweighted_election=task.params["sign_election"] == "unweighted")
