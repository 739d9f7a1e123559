"""DELLA: magnitude-ranked stochastic pruning (MagPrune) per row; `della` adds TIES sign election."""
from __future__ import annotations

import torch

from merging.method import MergeConfigError, Param, TensorTask, register
from merging.ops import combine, density_param, each, gta_params, magprune, rescale_param

_PARAMS = [density_param(), Param("epsilon", float, 0.15, per_model=True, help="keep probability spread ±ε"),
           rescale_param()]


def _validate(method: str):
    def validate(params: dict, model_params: list[dict]) -> None:
        for i, mp in enumerate(model_params):
            d, eps = mp["density"], mp["epsilon"]
            if d < 1 and not (0 < d - eps and d + eps <= 1):
                raise MergeConfigError(f"merge_method {method}, models[{i}]: needs 0 < density - epsilon and "
                                       f"density + epsilon <= 1, got density={d}, epsilon={eps}")
    return validate


def _pruned(task: TensorTask) -> list[torch.Tensor]:
    rescale = task.params["rescale"]
    mps = task.model_params
    return each(task.take_deltas(), lambda i, d: magprune(task, i, d, mps[i]["density"], mps[i]["epsilon"], rescale))


@register("della_linear", params=gta_params(False, *_PARAMS), validate=_validate("della_linear"))
def della_linear(task: TensorTask) -> torch.Tensor:
    return combine(task, _pruned(task), sign_election=False, normalize=task.params["normalize"])


@register("della", params=gta_params(True, *_PARAMS, sign_election=True), validate=_validate("della"))
def della(task: TensorTask) -> torch.Tensor:
    return combine(task, _pruned(task), sign_election=True, normalize=task.params["normalize"],
                   unweighted_election=task.params["sign_election"] == "unweighted")
