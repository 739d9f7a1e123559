"""The merge configuration: mergekit's YAML schema (the subset h3ops runs), checked before any I/O.

    merge_method: ties
    base_model: ./base
    models:
      - model: ./helpful
        parameters: {weight: 1.0, density: 0.5}
    parameters: {normalize: true}
    dtype: float32          # mergekit's compute dtype; h3ops always computes in float32
    out_dtype: bfloat16
    tokenizer_source: base  # union, or a model path; or a `tokenizer:` section (merging/vocab.py)

Unknown keys, methods and parameters raise MergeConfigError naming them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from h3ops.suggest import did_you_mean
from merging import chat_templates, settings, vocab
from merging.slices import Slice, Source
from merging.slices import parse as parse_slices
from merging.method import MergeConfigError, MergeMethod, get_method, unsupported

TOP_KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype", "tokenizer_source",
            "tokenizer", "chat_template"}
MODEL_KEYS = {"model", "parameters"}
# mergekit 0.1.5 config keys h3ops does not run yet: refused by name, never silently ignored.
MERGEKIT_ONLY_KEYS = {
    "modules": "`modules`",
}
DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}

# Where a model reference that is not a local folder would be resolved (scheme → function giving a
# local folder). The registry can add e.g. "s3" or "models" here; nothing is fetched by default.
RESOLVERS: dict[str, Callable[[str], Path]] = {}
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


@dataclass
class ModelSpec:
    ref: str  # as written in the config
    path: Path  # resolved local folder
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class MergeConfig:
    method: MergeMethod
    base: ModelSpec | None
    models: list[ModelSpec]  # the candidates the method sees (the base removed for task-vector methods)
    params: dict[str, Any]  # resolved global parameters
    model_params: list[dict[str, Any]]  # resolved per candidate
    out_dtype: str | None
    tokenizer_source: Path | None  # a folder the tokenizer is read from that may not be an input
    raw: dict[str, Any]  # the config as given, recorded in h3ops.json
    # The parameter settings as written when any is a gradient or a filter list (else None):
    # `params_for` evaluates them per tensor (merging/settings.py).
    per_tensor: tuple[dict[str, Any], list[dict[str, Any]]] | None = None
    slices: list[Slice] | None = None  # mergekit's `slices:` (merging/slices.py); None for `models:`
    chat_template: str | None = None  # a name, "auto" or a Jinja template (merging/chat_templates.py)
    vocab: vocab.VocabSpec | None = None  # tokenizer_source / tokenizer: (merging/vocab.py); None: copied as is

    def params_for(self, tensor: str, t: float, slice_index: int | None = None) -> tuple[dict, list[dict]]:
        """The resolved (global, per-model) parameters of one tensor at layer position t."""
        if self.slices is not None:
            sl = self.slices[slice_index]
            g, ms = {**settings.at(self.per_tensor[0], tensor, t), **settings.at(sl.params, tensor, t)}, \
                [settings.at(src.params, tensor, t) for src in self.candidate_sources(sl)]
        elif self.per_tensor is not None:
            g, ms = (settings.at(self.per_tensor[0], tensor, t),
                     [settings.at(m, tensor, t) for m in self.per_tensor[1]])
        else:
            return self.params, self.model_params
        try:
            return self.method.resolve(g, ms)
        except MergeConfigError as e:
            raise MergeConfigError(f"tensor {tensor!r} (t = {t:.3g}): {e}") from None

    def candidate_sources(self, sl: Slice) -> list[Source]:
        """A slice's sources the method sees as candidates (all but the base for task-vector methods)."""
        return [src for src in sl.sources if not (self.method.uses_base and self.base and src.index == 0)]

    @property
    def all_inputs(self) -> list[ModelSpec]:
        return ([self.base] if self.base else []) + self.models


def resolve_model(ref: Any, root: Path | None = None, resolve: Callable[[str], Path] | None = None) -> Path:
    """A model reference → a local checkpoint folder (the hook for s3:// and hub ids).

    `resolve`, when given, fetches references written as URIs (`models:/name/3`, `s3://…`; not
    `file://`): the config keeps the URI, which is what h3ops.json records as the parent."""
    if not isinstance(ref, str) or not ref.strip():
        raise MergeConfigError(f"model reference must be a non-empty string, got {ref!r}")
    if resolve is not None and _URI.match(ref) and not ref.startswith("file:"):
        return Path(resolve(ref)).resolve()
    if "://" in ref:
        scheme = ref.split("://", 1)[0]
        if scheme in RESOLVERS:
            return Path(RESOLVERS[scheme](ref))
        if scheme == "file":
            ref = ref[len("file://"):]
        else:
            raise MergeConfigError(
                f"model {ref!r}: {scheme}:// references are not resolved by the merge itself; "
                "fetch the checkpoint to a local folder first (or register a resolver in merging.config.RESOLVERS)")
    path = Path(ref).expanduser()
    candidates = [path] if path.is_absolute() else ([root / path] if root else []) + [Path.cwd() / path]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    if not path.is_absolute() and ref.count("/") == 1 and not ref.startswith("."):
        raise MergeConfigError(
            f"model {ref!r} is not a local folder; it looks like a Hugging Face Hub id, which is not "
            "downloaded here (offline): download it and give the local path")
    raise MergeConfigError(f"model {ref!r}: no such checkpoint folder")


def _dtype(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in DTYPE_NAMES:
        raise MergeConfigError(f"{key}: unknown dtype {value!r}; use one of float32, float16, bfloat16")
    return DTYPE_NAMES[value.lower()]


def load_config(config: dict | str | Path) -> tuple[dict, Path | None]:
    """Read a config (a mapping, a YAML path, or YAML text) → (mapping, folder it came from)."""
    import yaml

    from h3ops import safe_yaml

    if isinstance(config, dict):
        return dict(config), None
    text_given = isinstance(config, str) and "\n" in config
    if not text_given:
        path = Path(config)
        if not path.is_file():
            raise MergeConfigError(f"{path}: merge config file not found")
        try:
            data = safe_yaml.load_file(path)
        except yaml.YAMLError as e:
            raise MergeConfigError(f"{path}: not valid YAML ({e})") from e
        root = path.resolve().parent
    else:
        data, root = safe_yaml.loads(config), None
    if not isinstance(data, dict):
        raise MergeConfigError(f"merge config must be a mapping, got {type(data).__name__}")
    return data, root


def parse_config(config: dict | str | Path, resolve: Callable[[str], Path] | None = None) -> MergeConfig:
    """Validate everything that can be validated without reading a tensor (see resolve_model)."""
    data, root = load_config(config)
    for key in data:
        if key in MERGEKIT_ONLY_KEYS:
            raise unsupported(MERGEKIT_ONLY_KEYS[key])
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise MergeConfigError(f"unknown config key(s) {unknown}{did_you_mean(unknown[0], TOP_KEYS)}; "
                               f"known: {sorted(TOP_KEYS)}")
    if "merge_method" not in data:
        raise MergeConfigError("config has no merge_method")
    method = get_method(str(data["merge_method"]))
    base = None
    if data.get("base_model") is not None:
        base = ModelSpec(str(data["base_model"]), resolve_model(data["base_model"], root, resolve))
    elif method.needs_base:
        raise MergeConfigError(f"merge_method {method.name} needs base_model")
    if "slices" in data:
        if data.get("models"):
            raise MergeConfigError("give either 'models' or 'slices', not both")
        models, slices = _slice_inputs(data["slices"], method, base, root, resolve)
    else:
        models, slices = _model_inputs(data.get("models"), method, base, root, resolve), None
    global_params = data.get("parameters") or {}
    if not isinstance(global_params, dict):
        raise MergeConfigError(f"parameters must be a mapping, got {global_params!r}")
    if slices is None:
        params, model_params, per_tensor = _resolve(method, global_params, [m.parameters for m in models])
    else:
        params, model_params, per_tensor = _resolve_slices(method, base, global_params, slices)
    out_dtype = _dtype(data.get("out_dtype"), "out_dtype") or _dtype(data.get("dtype"), "dtype")
    spec = vocab.parse(data, lambda ref: resolve_model(ref, root, resolve))
    tokenizer_source = spec.source if spec is not None and isinstance(spec.source, Path) else None
    if spec is not None:
        inputs = {m.path for m in ([base] if base else []) + models}
        for tok, src in spec.tokens.items():
            if src.model is not None and src.model not in inputs:
                raise MergeConfigError(f"tokenizer.tokens[{tok!r}]: model {src.ref} is not one of the merge's inputs")
    return MergeConfig(method, base, models, params, model_params, out_dtype, tokenizer_source, data, per_tensor,
                       slices, chat_templates.check(data.get("chat_template")), spec)


def _model_inputs(models_raw: Any, method: MergeMethod, base: ModelSpec | None, root: Path | None,
                  resolve: Callable[[str], Path] | None) -> list[ModelSpec]:
    if not isinstance(models_raw, list) or not models_raw:
        raise MergeConfigError("config needs a non-empty list under 'models' (or mergekit's 'slices')")
    models: list[ModelSpec] = []
    for i, entry in enumerate(models_raw):
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or "model" not in entry:
            raise MergeConfigError(f"models[{i}] must be a mapping with a 'model' key, got {entry!r}")
        if "layer_range" in entry:
            raise MergeConfigError(f"models[{i}]: layer_range belongs to a source under 'slices'")
        bad = sorted(set(entry) - MODEL_KEYS)
        if bad:
            raise MergeConfigError(f"models[{i}]: unknown key(s) {bad}; known: {sorted(MODEL_KEYS)}")
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise MergeConfigError(f"models[{i}].parameters must be a mapping, got {params!r}")
        spec = ModelSpec(str(entry["model"]), resolve_model(entry["model"], root, resolve), dict(params))
        # mergekit drops the base from the candidates of a task-vector method (its delta is zero).
        if method.uses_base and base is not None and spec.path == base.path:
            continue
        models.append(spec)
    return models


def _slice_inputs(raw: Any, method: MergeMethod, base: ModelSpec | None, root: Path | None,
                  resolve: Callable[[str], Path] | None):
    """The models named in `slices:` (each once, base first) and the parsed slices."""
    models: list[ModelSpec] = []
    offset = 1 if base else 0

    def index_of(ref: Any, where: str) -> int:
        path = resolve_model(ref, root, resolve)
        if base is not None and path == base.path:
            return 0
        for i, m in enumerate(models):
            if m.path == path:
                return offset + i
        models.append(ModelSpec(str(ref), path))
        return offset + len(models) - 1

    slices = parse_slices(raw, index_of)
    for i, sl in enumerate(slices):
        if method.needs_base and not any(src.index == 0 for src in sl.sources):
            raise MergeConfigError(f"slices[{i}]: merge_method {method.name} needs base_model among the sources")
        if method.uses_base:
            sl.sources.sort(key=lambda src: src.index != 0)  # the base first, as the engine expects
    return models, slices


def _resolve_slices(method: MergeMethod, base: ModelSpec | None, global_params: dict, slices: list[Slice]):
    """Check every setting of every slice and source; the first slice's values stand for the config."""
    rows = [("parameters", global_params)]
    for i, sl in enumerate(slices):
        rows.append((f"slices[{i}].parameters", sl.params))
        rows += [(f"slices[{i}].sources[{k}].parameters", src.params) for k, src in enumerate(sl.sources)]
    _check_settings(method, rows)
    first = None
    for i, sl in enumerate(slices):
        cands = [src for src in sl.sources if not (method.uses_base and base and src.index == 0)]
        try:
            resolved = method.resolve({**settings.at(global_params, None, 0.0), **settings.at(sl.params, None, 0.0)},
                                      [settings.at(src.params, None, 0.0) for src in cands])
        except MergeConfigError as e:
            raise MergeConfigError(f"slices[{i}]: {e}") from None
        first = first or resolved
    return first[0], first[1], (dict(global_params), [])


def _check_settings(method: MergeMethod, rows: list[tuple[str, dict]]) -> None:
    """Gradients and filter lists: their structure, and every value they can take against the type."""
    by_name = {p.name: p for p in method.params}
    for where, row in rows:
        for k, v in row.items():
            settings.check(v, f"{where}.{k}")
            if settings.is_per_tensor(v) and k in by_name:
                for leaf in settings.leaves(v):
                    by_name[k].coerce(leaf, f"merge_method {method.name}, {where}")


def _resolve(method: MergeMethod, global_params: dict, model_params: list[dict]):
    """Resolve the parameters; gradients and filter lists are checked here (structure, and every value
    they can take against the parameter's type) and evaluated per tensor later, before any write."""
    rows = [("parameters", global_params)] + [(f"models[{i}].parameters", m) for i, m in enumerate(model_params)]
    if not any(settings.is_per_tensor(v) for _, row in rows for v in row.values()):
        return (*method.resolve(global_params, model_params), None)
    _check_settings(method, rows)
    # The first value of each setting stands for the whole config where one set is needed (a
    # method's prepass, the recorded summary); every tensor gets its own through params_for.
    params, per_model = method.resolve(settings.at(global_params, None, 0.0),
                                       [settings.at(m, None, 0.0) for m in model_params])
    return params, per_model, (dict(global_params), [dict(m) for m in model_params])
