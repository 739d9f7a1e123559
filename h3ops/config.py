"""The pipeline configuration: one YAML file per project, validated into typed models.

Every error names the offending field by its dotted path (`dimensions.1.landing`), so a typo in a
config is found at load time, before any task has run. Nothing here imports MLflow or Airflow; the
merge and DPO sections are checked against the merge engine's declarations and alignment's DPO
settings (h3ops.config_checks).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml
from h3ops import safe_yaml
from h3ops.names import ALL_DIMENSIONS, MODEL_SUFFIX
from h3ops.safe_yaml import clip
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evaluation.gate import GatePolicy


class ConfigError(ValueError):
    """A pipeline config that does not validate; the message names every bad field."""


class _Strict(BaseModel):
    # Unknown keys are errors: a misspelt option must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dimension(_Strict):
    name: str
    landing: str = Field(description="folder or s3://bucket/prefix where preference files land")
    pattern: str = "*.jsonl"

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in ALL_DIMENSIONS:
            raise ValueError(f"unknown dimension {v!r}; expected one of {', '.join(ALL_DIMENSIONS)}")
        return v

    @field_validator("landing")
    @classmethod
    def _location(cls, v: str) -> str:
        if not v:
            raise ValueError("landing location is empty")
        if "://" in v and not v.startswith(("s3://", "file://")):
            raise ValueError(f"landing must be a local folder or s3://bucket/prefix, got {v!r}")
        return v

    @property
    def is_s3(self) -> bool:
        return self.landing.startswith("s3://")


class DPO(_Strict):
    """DPO settings; `preset` picks a named DPOSettings preset, `overrides` sets its fields.

    `devices` is how many devices (GPUs) one DPO task trains on: the step launches that many
    processes and the Airflow task takes that many slots of the GPU pool (plugins.pools)."""
    preset: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    devices: int = Field(default=1, ge=1, le=64)


class Merge(_Strict):
    method: str = "r_tsvm"
    parameters: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    dtype: str | None = None


class Evaluation(_Strict):
    suite: str = "cpu-3h"
    limit: int | None = Field(default=None, gt=0)
    judge: str | None = None
    cache_dir: str | None = None


# The gate section is validated by the gate's own policy class: its fields, defaults and bounds
# (a negative margin is refused unless allow_unsafe_policy, ...) are declared once, there.
Gate = GatePolicy


class Registry(_Strict):
    tracking_uri: str = "sqlite:///.h3ops/mlflow.db"
    registry_uri: str | None = None
    artifact_location: str | None = ".h3ops/mlartifacts"
    serving_manifest: str | None = None

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        if not v.startswith(("sqlite:///", "http://", "https://", "postgresql://", "file:", "databricks")):
            raise ValueError(f"unsupported tracking URI {v!r} (sqlite:///…, http(s)://…, postgresql://…)")
        return v


class Continual(_Strict):
    """Sequential continual-DPO baseline: stage k trains from stage k-1 on the next dimension."""
    enabled: bool = True
    order: list[str] | None = None  # default: the order of `dimensions`


class PipelineConfig(_Strict):
    project: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    base_model: str = Field(description="a checkpoint folder, models:/… URI, 'smollm2' or 'tiny'")
    dimensions: list[Dimension] = Field(min_length=1)
    dpo: DPO = Field(default_factory=DPO)
    continual: Continual = Field(default_factory=Continual)
    merge: Merge = Field(default_factory=Merge)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    gate: Gate = Field(default_factory=Gate)
    registry: Registry = Field(default_factory=Registry)
    workdir: str = ".h3ops/work"
    # Where tasks on workers that share no disk hand datasets and ledgers to each other
    # (h3ops/steps/handoff.py); unset: the workdir, on one machine.
    store: str | None = Field(default=None, pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,62}(/.*)?$",
                              description="s3://bucket/prefix shared by every worker")

    @model_validator(mode="after")
    def _consistent(self) -> "PipelineConfig":
        names = [d.name for d in self.dimensions]
        if len(set(names)) != len(names):
            raise ValueError(f"dimensions: duplicate names in {names}")
        if self.continual.order is not None:
            unknown = [o for o in self.continual.order if o not in names]
            if unknown:
                raise ValueError(f"continual.order: {unknown} not among dimensions {names}")
        return self

    # Registered model names per project (DESIGN: <name>-candidates, -continual, -merged).
    def model_name(self, kind: str) -> str:
        return f"{self.project}-{MODEL_SUFFIX[kind]}"

    def dimension(self, name: str) -> Dimension:
        for d in self.dimensions:
            if d.name == name:
                return d
        raise KeyError(f"dimension {name!r} is not configured (have {[d.name for d in self.dimensions]})")

    @property
    def continual_order(self) -> list[str]:
        return list(self.continual.order or [d.name for d in self.dimensions])

    @property
    def work(self) -> Path:
        return Path(self.workdir)

    def with_overrides(self, overrides: dict[str, Any]) -> "PipelineConfig":
        return validate_config(_deep_merge(self.model_dump(), overrides))


def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _describe(err: ValidationError | None, source: str, problems: list[tuple[str, str]] = ()) -> str:
    lines = []
    for e in err.errors() if err is not None else []:
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        # A domain validator run by pydantic (GatePolicy) names its field on the error it raised.
        inner = getattr((e.get("ctx") or {}).get("error"), "field", None)
        if inner:
            where = f"{where}.{inner}"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown field"
        lines.append(f"  {where}: {clip(msg)}")
    lines += [f"  {where}: {clip(msg)}" for where, msg in problems]
    return f"{source}: invalid pipeline config\n" + "\n".join(lines)


def validate_config(data: dict[str, Any], source: str = "config") -> PipelineConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    from h3ops.config_checks import domain_problems

    # Both layers run, so one load names every bad field: the typed models' and the merge
    # engine's / DPO settings' (h3ops.config_checks).
    problems = domain_problems(data)
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, source, problems)) from None
    if problems:
        raise ConfigError(_describe(None, source, problems))
    return cfg


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read and validate a pipeline YAML (a path or an s3:// URI); `overrides` are deep-merged first."""
    source = str(path)
    try:
        if source.startswith("s3://"):
            data = _load_s3(source)
        else:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"{path}: pipeline config not found")
            data = safe_yaml.load_file(path) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML ({e})") from None
    if overrides:
        data = _deep_merge(data, overrides)
    return validate_config(data, source)


def _load_s3(uri: str) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    from h3ops import s3
    try:
        text = s3.read_text(uri, max_bytes=safe_yaml.MAX_BYTES)
    except (ClientError, BotoCoreError, ValueError) as e:
        raise ConfigError(f"{uri}: pipeline config not readable ({e})") from None
    return safe_yaml.loads(text, uri) or {}


def dump_config(cfg: PipelineConfig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    return path


def config_digest(cfg: PipelineConfig) -> str:
    from h3ops.digest import digest_json
    return digest_json(cfg.model_dump())
