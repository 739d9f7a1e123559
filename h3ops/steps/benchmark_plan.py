"""The merge benchmark's plan: which methods run, with which settings (h3ops/merge_benchmark.yaml).

The file is validated when it is loaded, before any merge runs: every entry's method must exist
and its parameters must resolve against that method's own parameter list (merging's validation),
and every swept value too. Errors name the file, the entry and the field.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from h3ops import safe_yaml

DEFAULT_PLAN = Path(__file__).resolve().parents[1] / "merge_benchmark.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Entry(_Strict):
    label: str = Field(pattern=r"^[a-z0-9_.=@-]+$")
    method: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    weights_by_dimension: dict[str, float] = Field(default_factory=dict)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)


class Mixture(_Strict):
    """A data-mixture baseline (alignment.mixture): one DPO job on the mixed data per swept value."""
    label: str = Field(pattern=r"^[a-z0-9_.=@-]+$")
    method: Literal["heuristic", "reward", "hummer"]
    parameters: dict[str, Any] = Field(default_factory=dict)
    sweep: dict[str, list[Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> "Mixture":
        allowed = {"heuristic": {"ratio", "seed"}, "reward": {"rule", "keep", "min_margin", "seed", "samples", "temperature",
                                                                "top_p", "max_new_tokens"},
                   "hummer": {"threshold", "seed"}}[self.method]
        unknown = sorted((set(self.parameters) | set(self.sweep)) - allowed)
        if unknown:
            raise ValueError(f"mixture {self.label!r} ({self.method}): unknown parameter(s) {unknown}; "
                             f"known: {sorted(allowed)}")
        return self

    def runs(self, version: int) -> list[dict[str, Any]]:
        """Every swept value (the paper keeps the best one), or the parameters alone."""
        base = {"label": self.label, "method": self.method, "parameters": dict(self.parameters),
                "version": version}
        runs = [{**base, "label": f"{self.label}@{k}={v}", "parameters": {**self.parameters, k: v}}
                for k, vs in self.sweep.items() for v in vs]
        return runs or [base]


class Plan(_Strict):
    version: int = Field(ge=1)
    entries: list[Entry] = Field(min_length=1)
    equal_by_spec: list[tuple[str, str]] = Field(default_factory=list)
    mixtures: list[Mixture] = Field(default_factory=list)

    def mixture_runs(self, scored: bool) -> list[dict[str, Any]]:
        """The mixture DPO jobs; reward and hummer need a scorer and are left out without one."""
        return [r for m in self.mixtures if scored or m.method == "heuristic" for r in m.runs(self.version)]

    @model_validator(mode="after")
    def _unique(self) -> "Plan":
        labels = [e.label for e in self.entries]
        dup = sorted({lab for lab in labels if labels.count(lab) > 1})
        if dup:
            raise ValueError(f"entries: duplicate labels {dup}")
        unknown = sorted({lab for pair in self.equal_by_spec for lab in pair} - set(labels))
        if unknown:
            raise ValueError(f"equal_by_spec: unknown labels {unknown}")
        return self

    def expanded(self, sweep: bool = False) -> list[dict[str, Any]]:
        """One dict per merge to run; with `sweep`, also one per swept value (label@name=value)."""
        out = []
        for e in self.entries:
            base = {"label": e.label, "method": e.method, "parameters": dict(e.parameters),
                    "weights_by_dimension": dict(e.weights_by_dimension), "version": self.version}
            out.append(base)
            if sweep:
                for name, values in e.sweep.items():
                    out += [{**base, "label": f"{e.label}@{name}={v}", "parameters": {**e.parameters, name: v}}
                            for v in values if v != e.parameters.get(name)]
        return out

    def entries_for(self, methods: list[str] | None = None, sweep: bool = False) -> list[dict[str, Any]]:
        """Entries whose label or method is in `methods` (all when None); unknown names are an error."""
        entries = self.expanded(sweep)
        if not methods:
            return entries
        known = {e["label"] for e in entries} | {e["method"] for e in entries}
        unknown = sorted(set(methods) - known)
        if unknown:
            raise ValueError(f"unknown benchmark method(s) {unknown}; known: {sorted(known)}")
        return [e for e in entries if e["label"] in methods or e["method"] in methods]


def _check_methods(plan: Plan, source: str) -> None:
    """Resolve every merge (and every swept value) against its method's parameters, 3 models."""
    from merging.method import MergeConfigError, available_methods, get_method

    known = available_methods()
    for i, e in enumerate(plan.expanded(sweep=True)):
        where = f"{source}: entry {e['label']!r}"
        if e["method"] not in known:
            raise ValueError(f"{where}: unknown merge method {e['method']!r}; known: {known}")
        models = [{"weight": w} for w in list(e["weights_by_dimension"].values())[:3]] or [{}, {}, {}]
        try:
            get_method(e["method"]).resolve(e["parameters"], models)
        except MergeConfigError as err:
            raise ValueError(f"{where}: {err}") from None


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> Plan:
    try:
        data = safe_yaml.load_file(path)
    except safe_yaml.YamlError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    try:
        plan = Plan.model_validate(data if isinstance(data, dict) else {})
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in e.errors()]
        raise ValueError(f"{path}: invalid merge benchmark plan\n" + "\n".join(lines)) from None
    _check_methods(plan, path)
    return plan


def load_plan(path: str | Path | None = None) -> Plan:
    """The validated plan at `path` (default: the packaged h3ops/merge_benchmark.yaml)."""
    p = Path(path or DEFAULT_PLAN)
    if not p.is_file():
        raise ValueError(f"{p}: merge benchmark plan not found")
    return _load(str(p.resolve()), p.stat().st_mtime_ns)
