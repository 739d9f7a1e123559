"""mergekit's `slices:`: output layers drawn from layer ranges of the inputs (frankenmerges included).

    slices:
      - sources:
          - {model: ./a, layer_range: [0, 16]}
          - {model: ./b, layer_range: [0, 16], parameters: {weight: 0.3}}
        parameters: {t: 0.5}          # this slice's settings (above the global `parameters`)
      - sources:
          - {model: ./b, layer_range: [8, 24]}   # passthrough: one source, layers copied

Output layer j of a slice of n layers is merged from layer `start + j` of each source, at gradient
position t = j/(n-1). Tensors outside the layers come from the first slice's sources when they are
embeddings and from the last slice's otherwise (final norm, lm_head), as in mergekit, at t = 0.
Precedence of a setting: the source's, then the slice's, then the global one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from merging.method import MergeConfigError

LAYER = re.compile(r"((?:^|\.)layers\.)(\d+)(\.)")
SOURCE_KEYS = {"model", "layer_range", "parameters"}
SLICE_KEYS = {"sources", "parameters"}


@dataclass
class Source:
    index: int  # into MergeConfig.all_inputs (0 is the base when there is one)
    start: int
    end: int
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Slice:
    sources: list[Source]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.sources[0].end - self.sources[0].start


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MergeConfigError(f"{where} must be a mapping, got {value!r}")
    return dict(value)


def parse(raw: Any, index_of: Callable[[Any, str], int]) -> list[Slice]:
    """Validate `slices:`; `index_of(model_ref, where)` gives that model's index among the merge's
    inputs (adding it when new), so every source names one of one list of inputs."""
    if not isinstance(raw, list) or not raw:
        raise MergeConfigError("slices must be a non-empty list")
    out = []
    for i, s in enumerate(raw):
        where = f"slices[{i}]"
        if not isinstance(s, dict) or not isinstance(s.get("sources"), list) or not s["sources"]:
            raise MergeConfigError(f"{where} needs a non-empty list under 'sources'")
        bad = sorted(set(s) - SLICE_KEYS)
        if bad:
            raise MergeConfigError(f"{where}: unknown key(s) {bad}; known: {sorted(SLICE_KEYS)}")
        sources = []
        for k, src in enumerate(s["sources"]):
            swhere = f"{where}.sources[{k}]"
            if not isinstance(src, dict) or "model" not in src or "layer_range" not in src:
                raise MergeConfigError(f"{swhere} needs 'model' and 'layer_range'")
            bad = sorted(set(src) - SOURCE_KEYS)
            if bad:
                raise MergeConfigError(f"{swhere}: unknown key(s) {bad}; known: {sorted(SOURCE_KEYS)}")
            lr = src["layer_range"]
            if (not isinstance(lr, list) or len(lr) != 2 or not all(isinstance(x, int) and not isinstance(x, bool)
                                                                   for x in lr) or not 0 <= lr[0] < lr[1]):
                raise MergeConfigError(f"{swhere}.layer_range must be [start, end] with 0 <= start < end, got {lr!r}")
            sources.append(Source(index_of(src["model"], swhere), lr[0], lr[1],
                                  _mapping(src.get("parameters"), f"{swhere}.parameters")))
        lengths = {x.end - x.start for x in sources}
        if len(lengths) != 1:
            raise MergeConfigError(f"{where}: every source of a slice spans the same number of layers, got "
                                   f"{[x.end - x.start for x in sources]}")
        out.append(Slice(sources, _mapping(s.get("parameters"), f"{where}.parameters")))
    return out


def layer_of(name: str) -> int | None:
    m = LAYER.search(name)
    return int(m.group(2)) if m else None


def renumber(name: str, layer: int) -> str:
    return LAYER.sub(lambda m: f"{m.group(1)}{layer}{m.group(3)}", name, count=1)


@dataclass
class Planned:
    """One output tensor: where each input value comes from, its slice, and its gradient position."""
    inputs: list[tuple[int, str]]  # (index into all_inputs, tensor name in that input)
    slice: int
    t: float
    reindex: bool = False  # an embedding re-indexed to a merged vocabulary (merging/vocab.py)


def layout(slices: list[Slice], names_of: Callable[[int], list[str]], refs: list[str]) -> tuple[dict[str, Planned], int]:
    """Every output tensor's sources, and the number of output layers; MergeError-free: a missing
    tensor or a layer range past the end raises MergeConfigError naming the source."""
    first = slices[0].sources[0]
    names = names_of(first.index)
    outside = [n for n in names if layer_of(n) is None]
    plan: dict[str, Planned] = {}
    for n in outside:
        s = 0 if "embed" in n else len(slices) - 1
        plan[n] = Planned([(src.index, n) for src in slices[s].sources], s, 0.0)
    by_layer: dict[tuple[int, int], list[str]] = {}
    for i in {src.index for sl in slices for src in sl.sources}:
        for n in names_of(i):
            if (layer := layer_of(n)) is not None:
                by_layer.setdefault((i, layer), []).append(n)
    out_layer = 0
    for si, sl in enumerate(slices):
        n_layers = sl.length
        for k in range(n_layers):
            t = k / (n_layers - 1) if n_layers > 1 else 1.0
            lead = sl.sources[0]
            lead_names = by_layer.get((lead.index, lead.start + k))
            if not lead_names:
                raise MergeConfigError(f"slices[{si}]: {refs[lead.index]} has no layer {lead.start + k} "
                                       f"(layer_range {[lead.start, lead.end]})")
            for n in lead_names:
                inputs = []
                for src in sl.sources:
                    in_name = renumber(n, src.start + k)
                    if in_name not in set(by_layer.get((src.index, src.start + k), ())):
                        raise MergeConfigError(f"slices[{si}]: {refs[src.index]} has no tensor {in_name!r} "
                                               f"(layer_range {[src.start, src.end]})")
                    inputs.append((src.index, in_name))
                plan[renumber(n, out_layer)] = Planned(inputs, si, t)
            out_layer += 1
    return plan, out_layer
