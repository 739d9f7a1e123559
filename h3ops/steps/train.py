"""Training steps: the base model, one DPO candidate per dimension, the continual-DPO baseline.

Output folders are named by what determines their content (dimension, data digest, settings
digest), so a retried or cleared task finds its own finished output instead of training again;
alignment's trainer resumes a half-finished one.
"""
from __future__ import annotations

from typing import Any

from h3ops.config import PipelineConfig
from h3ops.digest import digest_json, short
from h3ops.steps import step
from h3ops.steps.common import abspath, local_model, workdir
from h3ops.steps.handoff import dataset_local


@step("prepare_base")
def prepare_base(cfg: PipelineConfig) -> str:
    """The base checkpoint as a registered `models:/<project>-base/N` URI: the tasks that use it may
    run on workers that share no disk with this one, so the base travels by URI (and its content
    digest), never as a path. 'tiny' and 'smollm2' are built once per worker; registering the same
    content again finds the existing version."""
    name = cfg.base_model
    if name.startswith("models:/"):
        return name
    if name == "tiny":
        from h3ops.testing import make_tiny_llama
        out = workdir(cfg, "base") / "tiny"
        if not (out / "config.json").is_file():
            make_tiny_llama(out)
    elif name == "smollm2":
        from h3ops.smollm2 import ensure_smollm2
        out = ensure_smollm2()
    else:
        out = local_model(cfg, name)
    from h3ops.steps.register import register
    return register(cfg, str(out), "base")["uri"]


def dpo_settings(cfg: PipelineConfig, **extra: Any):
    """alignment's DPOSettings from the config's preset and overrides (its own validation applies)."""
    from alignment.dpo import DPOSettings
    overrides = {**cfg.dpo.overrides, **extra}
    if cfg.dpo.preset:
        return DPOSettings.preset(cfg.dpo.preset, **overrides)
    return DPOSettings.from_dict(overrides)


def _settings_key(cfg: PipelineConfig) -> str:
    return short(digest_json({"preset": cfg.dpo.preset, "overrides": cfg.dpo.overrides}))


@step("train")
def train_candidate(cfg: PipelineConfig, base: str, dataset: dict, dimension: str) -> dict:
    """DPO from the common base on one dimension's dataset → {path, dimension, data_digest}."""
    from alignment.dpo import train
    if dataset.get("dimension", dimension) != dimension:
        raise ValueError(f"dataset is for {dataset.get('dimension')!r}, task is for {dimension!r}")
    dataset = {**dataset, "uri": str(dataset_local(cfg, dataset))}
    base_dir = local_model(cfg, base)
    key = short(digest_json([str(base_dir), dataset["digest"], _settings_key(cfg)]))
    out = workdir(cfg, "candidates") / f"{dimension}-{key}"
    path = train(base_dir, dataset["uri"], out, settings=dpo_settings(cfg), dimension=dimension,
                 devices=cfg.dpo.devices, jobs=workdir(cfg, "dpo-jobs"))
    return {"path": str(path), "dimension": dimension, "data_digest": dataset["digest"]}


@step("continual")
def train_continual(cfg: PipelineConfig, base: str, datasets: dict[str, dict]) -> list[dict]:
    """Sequential DPO over `continual_order`: stage k starts from stage k-1 (the paper's baseline)."""
    from alignment.continual import run_continual
    order = [d for d in cfg.continual_order if d in datasets]
    if not order:
        raise ValueError("continual: no dataset for any dimension in continual.order")
    datasets = {d: {**v, "uri": str(dataset_local(cfg, v))} for d, v in datasets.items()}
    base_dir = local_model(cfg, base)
    key = short(digest_json([str(base_dir)] + [[d, datasets[d]["digest"]] for d in order] + [_settings_key(cfg)]))
    stages = [(d, datasets[d]["uri"]) for d in order]
    paths = run_continual(base_dir, stages, workdir(cfg, "continual") / key,
                          settings=dpo_settings(cfg), devices=cfg.dpo.devices, jobs=workdir(cfg, "dpo-jobs"))
    return [{"path": str(abspath(p)), "dimension": d, "data_digest": datasets[d]["digest"], "stage": i + 1}
            for i, (p, d) in enumerate(zip(paths, order))]
