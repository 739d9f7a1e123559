"""`passthrough`: one input's tensor, copied (times `scale`) — mergekit's frankenmerge building block.

With `slices:` each slice names one source layer range; the output stacks them (merging/slices.py).
`scale` (default 1) is usually set with a filter, e.g. scale: [{filter: o_proj, value: 0}, {value: 1}].
"""
from __future__ import annotations

import torch

from merging.method import MergeConfigError, Param, TensorTask, register


def _one_input(params: dict, model_params: list[dict]) -> None:
    if len(model_params) != 1:
        raise MergeConfigError(f"merge_method passthrough: takes exactly one input per tensor, got {len(model_params)}")


@register("passthrough", params=[Param("scale", float, 1.0, per_model=True, help="multiply the copied values")],
          needs_base=False, validate=_one_input, elementwise=True)
def passthrough(task: TensorTask) -> torch.Tensor:
    scale = task.per_model("scale")[0]
    value = task.candidates[0]
    return value if scale == 1.0 else value * scale
