"""The merge configuration: mergekit's YAML schema (the subset h3ops runs), checked before any I/O.

    merge_method: ties
    base_model: ./base
    models:
      - model: ./helpful
        parameters: {weight: 1.0, density: 0.5}
    parameters: {normalize: true}
    dtype: float32          # mergekit's compute dtype; h3ops always computes in float32
    out_dtype: bfloat16
    tokenizer_source: base  # or a model path

Unknown keys, methods and parameters raise MergeConfigError naming them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from merging.method import MergeConfigError, MergeMethod, get_method

TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source"}
MODEL_KEYS = {"model", "parameters"}
DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}

# Where a model reference that is not a local folder would be resolved (scheme → function giving a
# local folder). The registry can add e.g. "s3" or "models" here; nothing is fetched by default.
RESOLVERS: dict[str, Callable[[str], Path]] = {}


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
    tokenizer_source: Path | None
    raw: dict[str, Any]  # the config as given, recorded in h3ops.json

    @property
    def all_inputs(self) -> list[ModelSpec]:
        return ([self.base] if self.base else []) + self.models


def resolve_model(ref: Any, root: Path | None = None) -> Path:
    """A model reference → a local checkpoint folder (the hook for s3:// and hub ids)."""
    if not isinstance(ref, str) or not ref.strip():
        raise MergeConfigError(f"model reference must be a non-empty string, got {ref!r}")
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


def parse_config(config: dict | str | Path) -> MergeConfig:
    """Validate everything that can be validated without reading a tensor."""
    data, root = load_config(config)
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise MergeConfigError(f"unknown config key(s) {unknown}; known: {sorted(TOP_KEYS)}")
    if "merge_method" not in data:
        raise MergeConfigError("config has no merge_method")
    method = get_method(str(data["merge_method"]))
    models_raw = data.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise MergeConfigError("config needs a non-empty list under 'models'")
    base = None
    if data.get("base_model") is not None:
        base = ModelSpec(str(data["base_model"]), resolve_model(data["base_model"], root))
    elif method.needs_base:
        raise MergeConfigError(f"merge_method {method.name} needs base_model")
    models: list[ModelSpec] = []
    for i, entry in enumerate(models_raw):
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or "model" not in entry:
            raise MergeConfigError(f"models[{i}] must be a mapping with a 'model' key, got {entry!r}")
        bad = sorted(set(entry) - MODEL_KEYS)
        if bad:
            raise MergeConfigError(f"models[{i}]: unknown key(s) {bad}; known: {sorted(MODEL_KEYS)}")
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise MergeConfigError(f"models[{i}].parameters must be a mapping, got {params!r}")
        spec = ModelSpec(str(entry["model"]), resolve_model(entry["model"], root), dict(params))
        # mergekit drops the base from the candidates of a task-vector method (its delta is zero).
        if method.needs_base and base is not None and spec.path == base.path:
            continue
        models.append(spec)
    global_params = data.get("parameters") or {}
    if not isinstance(global_params, dict):
        raise MergeConfigError(f"parameters must be a mapping, got {global_params!r}")
    params, model_params = method.resolve(global_params, [m.parameters for m in models])
    out_dtype = _dtype(data.get("out_dtype"), "out_dtype") or _dtype(data.get("dtype"), "dtype")
    tok = data.get("tokenizer_source")
    tokenizer_source = None
    if tok is not None and tok != "base":
        if tok == "union":
            raise MergeConfigError("tokenizer_source: 'union' (vocabulary merging) is not supported; use base or a model path")
        tokenizer_source = resolve_model(tok, root)
    return MergeConfig(method, base, models, params, model_params, out_dtype, tokenizer_source, data)
