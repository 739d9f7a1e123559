"""The data-mixture baselines of the merge benchmark: mix the dimensions' data, DPO on the mix.

Each run builds one mixed dataset (alignment.mixture) from the latest ingested dataset of every
configured dimension, the same data the candidates were trained on, then trains one DPO model on
it from the common base with the pipeline's DPO settings (and `dpo.devices`). Folders are keyed
by the inputs, so a retried task finds its own finished output.
"""
from __future__ import annotations

import json

from h3ops.config import PipelineConfig
from h3ops.digest import digest_json, short
from h3ops.steps import step
from h3ops.steps.benchmark_plan import load_plan
from h3ops.steps.common import local_model, workdir


@step("mixture_runs")
def mixture_runs(cfg: PipelineConfig, benchmark: str | None = None, scorer: str | None = None) -> list[dict]:
    """The plan's mixture jobs; reward and hummer only with a scorer."""
    return load_plan(benchmark).mixture_runs(scored=bool(scorer))


@step("train_mixture")
def train_mixture(cfg: PipelineConfig, base: str, datasets: list[dict], run: dict,
                  scorer: str | None = None) -> dict:
    """→ {path, label, method, parameters, data_digest}: the mixture's DPO checkpoint."""
    from alignment.dpo import train
    from alignment.mixture import build_mixture
    from alignment.scorers import identity, load_scorer
    from h3ops.steps.train import _settings_key, dpo_settings

    if not datasets:
        raise ValueError("train_mixture: no ingested datasets to mix")
    from h3ops.steps.handoff import dataset_local

    by_dim = {d["dimension"]: str(dataset_local(cfg, d)) for d in datasets}  # s3:// with a store
    base_dir = local_model(cfg, base)
    # reward and hummer only: the scorer's identity (model digest, or judge URL, model and prompt) keys the data
    scoring = load_scorer(scorer) if scorer and run["method"] != "heuristic" else None
    key = short(digest_json([str(base_dir), sorted(d["digest"] for d in datasets), run["method"],
                             run["parameters"], identity(scoring) if scoring else None, _settings_key(cfg)]))
    root = workdir(cfg, "mixtures") / f"{run['label'].replace('@', '-').replace('=', '')}-{key}"
    data_dir = root / "data"
    if not (data_dir / "dataset.json").is_file():
        # on-policy reward selection samples from the base the mixture's DPO job starts from
        build_mixture(run["method"], by_dim, data_dir, overwrite=data_dir.exists(), scorer=scoring,
                      policy=base_dir, **run["parameters"])
    digest = json.loads((data_dir / "dataset.json").read_text())["digest"]
    path = train(base_dir, data_dir, root / "model", settings=dpo_settings(cfg), dimension="mixture",
                 kind="mixture", devices=cfg.dpo.devices,
                 extra={"mixture": {"label": run["label"], "method": run["method"], "parameters": run["parameters"]}})
    return {"path": str(path), "label": run["label"], "method": run["method"], "parameters": run["parameters"],
            "data_digest": digest}
