"""Model Breadcrumbs: drop the smallest and the largest-outlier task-vector entries."""
from __future__ import annotations

import torch

from merging.method import MergeConfigError, Param, TensorTask, register
from merging.ops import combine, crumbs, density_param, each, gta_params

_PARAMS = [density_param(), Param("gamma", float, 0.01, per_model=True, help="fraction of largest |δ| dropped")]


def _validate(method: str):
    def validate(params: dict, model_params: list[dict]) -> None:
        for i, mp in enumerate(model_params):
            if not (0 <= mp["density"] and 0 <= mp["gamma"] < 1):
                raise MergeConfigError(f"merge_method {method}, models[{i}]: needs density >= 0 and "
                                       f"0 <= gamma < 1, got density={mp['density']}, gamma={mp['gamma']}")
    return validate


def _crumbed(task: TensorTask) -> list[torch.Tensor]:
    mps = task.model_params
    return each(task.take_deltas(), lambda i, d: crumbs(d, mps[i]["density"], mps[i]["gamma"]))


@register("breadcrumbs", params=gta_params(False, *_PARAMS), validate=_validate("breadcrumbs"))
def breadcrumbs(task: TensorTask) -> torch.Tensor:
    return combine(task, _crumbed(task), sign_election=False, normalize=task.params["normalize"])


@register("breadcrumbs_ties", params=gta_params(False, *_PARAMS, sign_election=True),
          validate=_validate("breadcrumbs_ties"))
def breadcrumbs_ties(task: TensorTask) -> torch.Tensor:
    return combine(task, _crumbed(task), sign_election=True, normalize=task.params["normalize"],
                   unweighted_election=task.params["sign_election"] == "unweighted")
