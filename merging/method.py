"""The method registry: each merge method is a function of one tensor plus declared parameters.

A method is written as

    @register("task_arithmetic", params=[Param("lambda", float, 1.0), Param("weight", float, 1.0, per_model=True)])
    def task_arithmetic(t: TensorTask) -> torch.Tensor: ...

The engine resolves and type-checks parameters before any tensor is read, then calls the function
once per tensor. It knows nothing about any method.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from h3ops.suggest import did_you_mean

if TYPE_CHECKING:
    import torch


class MergeConfigError(ValueError):
    """A merge configuration that cannot run; raised before any tensor is read."""


# mergekit 0.1.5 methods h3ops does not implement: named as such, never as an unknown typo.
MERGEKIT_ONLY_METHODS = ("ram", "ramplus_tl")


def unsupported(feature: str) -> MergeConfigError:
    return MergeConfigError(f"{feature} is a mergekit feature h3ops does not support yet")


_REQUIRED = object()


@dataclass(frozen=True)
class Param:
    name: str
    type: type  # float, int, bool or str
    default: Any = _REQUIRED
    per_model: bool = False  # may also be set per model under models[i].parameters
    choices: tuple = ()
    help: str = ""
    # ((given, meaning), …): other spellings accepted for mergekit configs, e.g. rescale: true → "l1".
    aliases: tuple = ()

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def coerce(self, value: Any, where: str) -> Any:
        """Check one value's type (ints are accepted for floats) and its allowed choices."""
        for given, meaning in self.aliases:
            if type(value) is type(given) and value == given:
                value = meaning
                break
        ok = isinstance(value, self.type) and not (self.type is not bool and isinstance(value, bool))
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise MergeConfigError(
                f"{where}: parameter {self.name!r} must be {self.type.__name__}, got {type(value).__name__} {value!r}")
        if self.choices and value not in self.choices:
            raise MergeConfigError(f"{where}: parameter {self.name!r} must be one of {list(self.choices)}, got {value!r}")
        return value


@dataclass
class TensorTask:
    """Everything a method sees for one tensor."""

    name: str
    base: "torch.Tensor | None"  # float32 (None for methods that do not need a base)
    candidates: list["torch.Tensor"]  # float32, one per model
    params: dict[str, Any]  # global parameters, resolved with defaults
    model_params: list[dict[str, Any]]  # per-model parameters, resolved with global fallbacks
    seed: int = 0
    state: dict[str, Any] = field(default_factory=dict)  # whole-model facts from a method's prepass
    # Set by the engine when the candidates are its own float32 copies that nothing reads after the
    # method (no diagnostics): take_deltas() may then overwrite them.
    consumable: bool = False

    def per_model(self, name: str) -> list[Any]:
        return [p[name] for p in self.model_params]

    def deltas(self) -> list["torch.Tensor"]:
        return [c - self.base for c in self.candidates]

    def take_deltas(self) -> list["torch.Tensor"]:
        """The task vectors as fresh tensors the method owns, computed in place on the candidates when
        `consumable` (same values, no copies: a merge's peak memory is a few float32 tensors fewer).
        The candidates are then gone (None): call it only in a method that does not read them after."""
        if not self.consumable:
            return self.deltas()
        out = [c.sub_(self.base) for c in self.candidates]
        self.candidates = [None] * len(out)
        return out

    def generator(self, model_index: int, device: Any = "cpu") -> "torch.Generator":
        """A generator seeded by (seed, tensor name, model index): order- and device-independent."""
        import torch

        key = f"{self.seed}\0{self.name}\0{model_index}".encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)
        return torch.Generator(device=device).manual_seed(seed)


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[[TensorTask], "torch.Tensor"]
    params: tuple[Param, ...]
    needs_base: bool = True
    min_models: int = 1
    # Optional whole-model first pass: called with an iterator of TensorTask (streamed), returns a
    # dict handed to every TensorTask.state (e.g. TIES' per-model magnitude threshold).
    prepass: Callable[[Any], dict[str, Any]] | None = None
    # Optional cross-parameter check `validate(params, model_params)` raising MergeConfigError
    # (e.g. DELLA's 0 < density - epsilon): still before any tensor is read.
    validate: Callable[[dict, list[dict]], None] | None = None
    # True when each output element depends only on the same element of the inputs (linear, task
    # arithmetic): the engine may then hand the function any contiguous slice of a tensor, flattened.
    # It streams large tensors through it in cache-sized blocks instead of whole float32 copies.
    elementwise: bool = False
    # True when the method works with or without a base (nuslerp, multislerp): given, the base is
    # the origin and never one of the candidates.
    optional_base: bool = False

    @property
    def uses_base(self) -> bool:
        return self.needs_base or self.optional_base

    def resolve(self, global_params: dict[str, Any], model_params: list[dict[str, Any]]) -> tuple[dict, list[dict]]:
        """Validate names and types; fill defaults. Errors name the method and the parameter."""
        by_name = {p.name: p for p in self.params}
        where = f"merge_method {self.name}"
        unknown = sorted(set(global_params) - set(by_name))
        if unknown:
            raise MergeConfigError(f"{where}: unknown parameter(s) {unknown}{did_you_mean(unknown[0], by_name)}; "
                                   f"known: {sorted(by_name)}")
        resolved = {}
        for p in self.params:
            if p.name in global_params:
                resolved[p.name] = p.coerce(global_params[p.name], where)
            elif not p.required:
                resolved[p.name] = p.default
            elif not p.per_model:
                raise MergeConfigError(f"{where}: missing required parameter {p.name!r}")
        per_model = []
        for i, mp in enumerate(model_params):
            mwhere = f"{where}, models[{i}]"
            bad = sorted(k for k in mp if k not in by_name or not by_name[k].per_model)
            if bad:
                allowed = sorted(p.name for p in self.params if p.per_model)
                raise MergeConfigError(f"{mwhere}: parameter(s) {bad} cannot be set per model; per-model: {allowed}")
            row = {}
            for p in self.params:
                if not p.per_model:
                    continue
                if p.name in mp:
                    row[p.name] = p.coerce(mp[p.name], mwhere)
                elif p.name in resolved:
                    row[p.name] = resolved[p.name]
                else:
                    raise MergeConfigError(f"{mwhere}: missing required parameter {p.name!r}")
            per_model.append(row)
        if len(model_params) < self.min_models:
            raise MergeConfigError(f"{where}: needs at least {self.min_models} model(s), got {len(model_params)}")
        if self.validate is not None:
            self.validate(resolved, per_model)
        return resolved, per_model


_METHODS: dict[str, MergeMethod] = {}


def register(name: str, params: list[Param] | tuple[Param, ...] = (), *, needs_base: bool = True,
             min_models: int = 1, prepass: Callable | None = None, validate: Callable | None = None,
             elementwise: bool = False, optional_base: bool = False):
    """Decorator: register `fn(task) -> tensor` as merge method `name`."""

    def wrap(fn):
        if name in _METHODS:
            raise ValueError(f"merge method {name!r} registered twice")
        _METHODS[name] = MergeMethod(name, fn, tuple(params), needs_base, min_models, prepass, validate,
                                     elementwise, optional_base)
        return fn

    return wrap


def _load_builtin_methods() -> None:
    # Importing the package registers every built-in method; methods live in merging/methods/.
    import importlib

    importlib.import_module("merging.methods")


def get_method(name: str) -> MergeMethod:
    _load_builtin_methods()
    try:
        return _METHODS[name]
    except KeyError:
        if name in MERGEKIT_ONLY_METHODS:
            raise MergeConfigError(f"merge_method {name!r} is a mergekit method h3ops does not support yet; "
                                   f"available: {sorted(_METHODS)}") from None
        raise MergeConfigError(f"unknown merge_method {name!r}{did_you_mean(name, _METHODS)}; "
                               f"available: {sorted(_METHODS)}") from None


def available_methods() -> list[str]:
    _load_builtin_methods()
    return sorted(_METHODS)
