"""Continual (sequential) DPO: stage k trains stage k-1's checkpoint on the next dataset.

The paper's order is helpfulness&honesty → helpfulness&harmlessness → helpfulness (Table 5). Each
stage is a full checkpoint of kind "continual" whose parent is the previous stage (the first
stage's parent is the base), so the registry can show the chain. Each stage is an ordinary
`dpo.train` job: a rerun skips finished stages and resumes an interrupted one.
"""
from __future__ import annotations

from pathlib import Path

from alignment.dpo import DPOSettings, train
from alignment.schema import check_dimension
from h3ops.digest import digest_dir

PAPER_ORDER = ("helpfulness&honesty", "helpfulness&harmlessness", "helpfulness")


def stage_dir(out_root: Path, index: int, dimension: str) -> Path:
    return out_root / f"stage{index}-{dimension.replace('&', '-')}"


def run_continual(base: str | Path, stages: list[tuple[str, str | Path]], out_root: str | Path, *,
                  settings: DPOSettings | None = None, overwrite: bool = False,
                   tracking_uri: str | None = None, devices: int = 1, jobs: Path | None = None) -> list[Path]:
    """Train the stages in order; returns one checkpoint folder per stage."""
    if not stages:
        raise ValueError("continual DPO needs at least one (dimension, dataset) stage")
    for dim, _ in stages:
        check_dimension(dim)
    out_root = Path(out_root)
    outputs: list[Path] = []
    current = Path(base)
    for i, (dim, data) in enumerate(stages, start=1):
        parent = {"uri": str(current), "digest": digest_dir(current)}
        out = train(current, data, stage_dir(out_root, i, dim), settings=settings, dimension=dim,
                    overwrite=overwrite, kind="continual", parents=[parent], tracking_uri=tracking_uri,
                    devices=devices, jobs=jobs,
                    extra={"stage": i, "stages": [d for d, _ in stages], "origin": str(base)})
        outputs.append(out)
        current = out
    return outputs
