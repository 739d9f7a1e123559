"""Merge the latest candidate of every dimension from their common base (R-TSVM by default)."""
from __future__ import annotations

from typing import Any

from h3ops.config import PipelineConfig
from h3ops.digest import digest_json, short
from h3ops.steps import step
from h3ops.steps.common import is_remote, local_model, workdir


def merge_config(cfg: PipelineConfig, base: str, candidates: list[str], method: str,
                 parameters: dict[str, Any], model_parameters: list[dict] | None = None) -> dict:
    """The mergekit-style config the merging engine reads (paths already local)."""
    per_model = model_parameters or [{} for _ in candidates]
    if len(per_model) != len(candidates):
        raise ValueError(f"merge: {len(per_model)} model_parameters for {len(candidates)} candidates")
    conf: dict[str, Any] = {
        "merge_method": method,
        "base_model": base,
        "models": [{"model": c, **({"parameters": dict(mp)} if mp else {})} for c, mp in zip(candidates, per_model)],
        "parameters": dict(parameters),
    }
    if cfg.merge.dtype:
        conf["dtype"] = cfg.merge.dtype
    return conf


@step("merge")
def merge_candidates(cfg: PipelineConfig, base: str, candidates: list[str], *,
                     method: str | None = None, parameters: dict | None = None,
                     model_parameters: list[dict] | None = None) -> dict:
    """→ {path, method, parameters, parents, diagnostics}; diagnostics.json is written inside the
    folder (it travels to MLflow with the checkpoint when registered). The output folder is keyed
    by the inputs, so a rerun returns the finished merge instead of writing it again."""
    from merging import merge

    if not candidates:
        raise ValueError("merge: no candidates to merge")
    method = method or cfg.merge.method
    params = cfg.merge.parameters if parameters is None else parameters
    key_inputs = {"base": base, "candidates": sorted(candidates), "method": method, "parameters": params,
                  "seed": cfg.merge.seed}
    if model_parameters:  # per-model settings follow their candidate, whatever the order
        key_inputs["model_parameters"] = sorted(zip(candidates, map(digest_json, model_parameters)))
    key = short(digest_json(key_inputs))
    out = workdir(cfg, "merged") / f"{method}-{key}"
    # The config names the models as given (registry URIs stay URIs) and the engine fetches them
    # through local_model: h3ops.json's parents are then the `models:/` URIs the registry's lineage
    # tags name, with the digests of the verified downloads, never download-cache paths.
    refs = [c if is_remote(c) else str(local_model(cfg, c)) for c in candidates]
    conf = merge_config(cfg, base if is_remote(base) else str(local_model(cfg, base)), refs, method, params,
                        model_parameters)
    if not (out / "h3ops.json").is_file():
        merge(conf, out, seed=cfg.merge.seed, overwrite=out.exists(), diagnostics=True,
              resolve=lambda uri: local_model(cfg, uri))
    diag = out / "diagnostics.json"
    return {"path": str(out), "method": method, "parameters": params, "parents": list(candidates),
            "diagnostics": str(diag) if diag.is_file() else None}
