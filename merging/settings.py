"""Per-tensor parameter settings, as mergekit 0.1.5 reads them.

A parameter's value in a merge config is one of
    0.5                                   the same everywhere
    [0, 0.5, 1]                           a gradient: interpolated over the layers (t = layer/(L-1))
    [{filter: self_attn, value: 0.3},     the first entry whose filter is a substring of the tensor's
     {value: 0.7}]                        name (no filter, or "*", matches all); its value may be a
                                          gradient itself
Tensors outside the numbered layers (embeddings, final norm, lm_head) sit at t = 0, as in mergekit.
Lists of strings or booleans pick the entry at int(t·(n-1)) instead of interpolating.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Iterator

from merging.method import MergeConfigError

MISSING = object()  # no filter entry matched: the parameter takes its default
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
FILTER_KEYS = {"filter", "value"}


def is_per_tensor(setting: Any) -> bool:
    return isinstance(setting, list)


def check(setting: Any, where: str) -> None:
    """Structure only (types are the parameter's to check): raise MergeConfigError naming `where`."""
    if not isinstance(setting, list):
        if isinstance(setting, dict):
            raise MergeConfigError(f"{where}: a mapping is not a parameter value; use a list of "
                                   "{filter: ..., value: ...} entries")
        return
    if not setting:
        raise MergeConfigError(f"{where}: an empty list is not a parameter value")
    if all(isinstance(e, dict) for e in setting):
        for i, cond in enumerate(setting):
            bad = sorted(set(cond) - FILTER_KEYS)
            if bad or "value" not in cond:
                raise MergeConfigError(f"{where}[{i}]: a filter entry has keys 'filter' (optional) and 'value', "
                                       f"got {sorted(cond)}")
            if cond.get("filter") is not None and not isinstance(cond["filter"], str):
                raise MergeConfigError(f"{where}[{i}].filter: must be a string, got {cond['filter']!r}")
            if isinstance(cond["value"], list) and any(isinstance(v, (list, dict)) for v in cond["value"]):
                raise MergeConfigError(f"{where}[{i}].value: a gradient of plain values, got {cond['value']!r}")
            check(cond["value"], f"{where}[{i}].value")
    elif any(isinstance(e, (list, dict)) for e in setting):
        raise MergeConfigError(f"{where}: a gradient holds plain values and a filter list holds mappings; "
                               f"got a mix: {setting!r}")


def leaves(setting: Any) -> Iterator[Any]:
    """Every plain value a setting can produce at its gradient's stops (for type checks up front)."""
    if isinstance(setting, list):
        for e in setting:
            yield from leaves(e["value"] if isinstance(e, dict) else e)
    else:
        yield setting


def evaluate(setting: Any, tensor: str | None, t: float) -> Any:
    """The value of one setting for one tensor at layer position t (MISSING when no filter matches).
    tensor None: the first filter entry, whatever its filter (a representative value)."""
    if not isinstance(setting, list):
        return setting
    if all(isinstance(e, dict) for e in setting):
        for cond in setting:
            f = cond.get("filter")
            if tensor is None or f is None or f == "*" or (tensor and f in tensor):
                return evaluate(cond["value"], tensor, t)
        return MISSING
    numeric = all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting)
    if not numeric:
        return setting[int(t * (len(setting) - 1))]
    scaled = t * (len(setting) - 1)
    i0 = int(scaled)
    i1 = min(len(setting) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * setting[i0] + frac * setting[i1]


def positions(names: Iterable[str]) -> dict[str, float]:
    """t of every tensor: layer i of L at i/(L-1) (1 when L = 1), everything outside the layers at 0."""
    names = list(names)
    index = {n: int(m.group(1)) for n in names if (m := _LAYER.search(n))}
    layers = max(index.values()) + 1 if index else 0
    return {n: ((index[n] / (layers - 1) if layers > 1 else 1.0) if n in index else 0.0) for n in names}


def at(settings: dict[str, Any], tensor: str | None, t: float) -> dict[str, Any]:
    """A parameter mapping evaluated for one tensor (unmatched filters dropped: defaults apply)."""
    out = {}
    for k, v in settings.items():
        value = evaluate(v, tensor, t)
        if value is not MISSING:
            out[k] = value
    return out
