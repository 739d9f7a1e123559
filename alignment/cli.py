"""`h3ops data|train|continual|mixture …` (argv[0] is the command).

  h3ops data validate FILE [--dimension D] [--format F]
  h3ops data build SOURCE… --out DIR --dimension D [--quarantine DIR] [--policy quarantine|drop]
  h3ops data demo --out ROOT [--per-dimension N]
  h3ops train dpo --base PATH --data DATASET --dimension D --out DIR [--lora] [--preset P] [--set k=v]…
  h3ops train continual --base PATH --stage D=DATASET … --out ROOT [settings]   (or `h3ops continual …`)
  h3ops mixture heuristic|reward|hummer --data D=DATASET … --out DIR [--ratio R] [--scorer PATH|judge:MODEL]
        [--rule on_policy --policy PATH --samples N] [--threshold T] [--train-base PATH --model-out DIR [settings]]
Every command prints one JSON object; exit status 0 on success, 1 on bad input, 2 on bad usage.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path

from h3ops.cliparser import Parser


def _emit(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help="paper | cpu-demo | test")
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter (merged into the output)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any DPOSettings field")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--devices", type=int, default=1,
                   help="train on this many devices: one torchrun process each (FSDP on GPUs)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   help="log training metrics to this MLflow tracking server (default $MLFLOW_TRACKING_URI)")


def _settings(ns):
    from alignment.dpo import DPOSettings

    kinds = {f.name: f.type for f in fields(DPOSettings)}
    over = {}
    for item in ns.set:
        key, sep, value = item.partition("=")
        if not sep or key not in kinds:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(kinds)}")
        try:
            over[key] = json.loads(value)
        except ValueError:
            over[key] = value
    if ns.lora:
        over["lora"] = True
    return DPOSettings.preset(ns.preset, **over) if ns.preset else DPOSettings.from_dict(over)


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        dim, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"{flag} {item!r}: expected DIMENSION=DATASET")
        out.append((dim, path))
    return out


def _data(argv: list[str]) -> int:
    p = Parser(prog="h3ops data", example="h3ops data validate landing/helpful.jsonl --dimension helpfulness\n"
               "h3ops data build landing/*.jsonl --dimension helpfulness --out data/helpful --quarantine data/q")
    sub = p.add_subparsers(dest="action", required=True)
    v = sub.add_parser("validate", example="h3ops data validate batch.jsonl --dimension honesty")
    v.add_argument("file")
    v.add_argument("--dimension")
    v.add_argument("--format")
    b = sub.add_parser("build", example="h3ops data build a.jsonl b.parquet --dimension honesty --out data/honest")
    b.add_argument("sources", nargs="+")
    b.add_argument("--out", required=True)
    b.add_argument("--dimension", required=True)
    b.add_argument("--quarantine")
    b.add_argument("--policy", default="quarantine", choices=("quarantine", "drop"))
    b.add_argument("--format")
    b.add_argument("--eval-holdout", type=float, default=0.05)
    b.add_argument("--overwrite", action="store_true")
    d = sub.add_parser("demo", example="h3ops data demo --out data/demo --per-dimension 64")
    d.add_argument("--out", required=True)
    d.add_argument("--per-dimension", type=int, default=64)
    ns = p.parse_args(argv)
    if ns.action == "validate":
        from alignment.validate import validate_file

        rep = validate_file(ns.file, dimension=ns.dimension, format=ns.format)
        _emit(rep.to_dict())
        return 0 if rep.ok else 1
    if ns.action == "build":
        from alignment.dataset import build_dataset

        ref = build_dataset(ns.sources, ns.out, dimension=ns.dimension, quarantine_dir=ns.quarantine,
                            policy=ns.policy, format=ns.format, eval_holdout=ns.eval_holdout,
                            overwrite=ns.overwrite)
        _emit(ref.to_dict())
        return 0
    from alignment.demo_data import build_demo_datasets

    _emit({d: r.to_dict() for d, r in build_demo_datasets(ns.out, per_dimension=ns.per_dimension).items()})
    return 0


def _train(argv: list[str]) -> int:
    if argv and argv[0] == "continual":
        return _continual(argv[1:])
    if argv and argv[0] == "dpo":
        argv = argv[1:]
    p = Parser(prog="h3ops train dpo", example="h3ops train dpo --base ./base --data data/helpful --dimension helpfulness --out ckpt/helpful --lora")
    p.add_argument("--base", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--dimension", required=True)
    p.add_argument("--out", required=True)
    _settings_args(p)
    ns = p.parse_args(argv)
    from alignment.dpo import train

    out = train(ns.base, ns.data, ns.out, settings=_settings(ns), dimension=ns.dimension, overwrite=ns.overwrite,
                tracking_uri=ns.tracking_uri, devices=ns.devices)
    _emit({"checkpoint": str(out), "manifest": json.loads((Path(out) / "h3ops.json").read_text())})
    return 0


def _continual(argv: list[str]) -> int:
    p = Parser(prog="h3ops continual", example="h3ops continual --base ./base --stage helpfulness=data/helpful --stage honesty=data/honest --out ckpt/continual")
    p.add_argument("--base", required=True)
    p.add_argument("--stage", "--stages", action="append", required=True, metavar="DIMENSION=DATASET",
                   help="repeat in training order (paper: helpfulness&honesty, helpfulness&harmlessness, helpfulness)")
    p.add_argument("--out", required=True)
    _settings_args(p)
    ns = p.parse_args(argv)
    from alignment.continual import run_continual

    stages = _pairs([s for item in ns.stage for s in item.split(",")], "--stage")
    outs = run_continual(ns.base, stages, ns.out, settings=_settings(ns), overwrite=ns.overwrite,
                         tracking_uri=ns.tracking_uri, devices=ns.devices)
    _emit({"checkpoints": [str(o) for o in outs]})
    return 0


def _mixture(argv: list[str]) -> int:
    p = Parser(prog="h3ops mixture", example="h3ops mixture heuristic --data helpfulness=data/helpful --data honesty=data/honest --out data/mix --ratio 0.1")
    p.add_argument("method", choices=("heuristic", "reward", "hummer"))
    p.add_argument("--data", action="append", required=True, metavar="DIMENSION=DATASET")
    p.add_argument("--out", required=True, help="the mixed dataset folder")
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--scorer", help="local sequence-classification reward model (labels = objectives), or "
                                    "judge:<model> for the OpenAI-compatible judge at H3OPS_JUDGE_BASE_URL")
    p.add_argument("--trust-remote-code", action="store_true", help="for ArmoRM")
    p.add_argument("--rule", default="top_fraction", choices=("on_policy", "top_fraction", "margin", "relabel"))
    p.add_argument("--policy", help="on_policy: the model that samples the answers (usually --train-base)")
    p.add_argument("--samples", type=int, help="on_policy: answers per prompt (default 5, as SimPO)")
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--min-margin", type=float, default=0.0)
    p.add_argument("--threshold", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-base", help="also DPO-train this base on the mixture")
    p.add_argument("--model-out")
    _settings_args(p)
    ns = p.parse_args(argv)
    from alignment.mixture import build_mixture
    from alignment.scorers import load_scorer

    scorer = load_scorer(ns.scorer, trust_remote_code=ns.trust_remote_code) if ns.scorer else None
    ref = build_mixture(ns.method, dict(_pairs(ns.data, "--data")), ns.out, scorer=scorer, ratio=ns.ratio,
                        seed=ns.seed, rule=ns.rule, keep=ns.keep, min_margin=ns.min_margin,
                        threshold=ns.threshold, policy=ns.policy or ns.train_base, samples=ns.samples,
                        overwrite=ns.overwrite)
    result = {"dataset": ref.to_dict()}
    if ns.train_base:
        if not ns.model_out:
            raise ValueError("--train-base needs --model-out")
        from alignment.dpo import train

        result["checkpoint"] = str(train(ns.train_base, ref.uri, ns.model_out, settings=_settings(ns),
                                         dimension="mixture", kind="mixture", overwrite=ns.overwrite,
                                         extra={"mixture": ns.method}, tracking_uri=ns.tracking_uri))
    _emit(result)
    return 0


HANDLERS = {"data": _data, "train": _train, "continual": _continual, "mixture": _mixture}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in HANDLERS:
        print(__doc__, file=sys.stderr)
        return 2
    from alignment.dataset import DatasetError
    from h3ops.checkpoint import CheckpointError

    try:
        return HANDLERS[argv[0]](argv[1:])
    except (DatasetError, CheckpointError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"h3ops {argv[0]}: error: {e}", file=sys.stderr)
        return 2  # bad input or usage (h3ops/cli.py's exit codes); 1 is a check that ran and failed


if __name__ == "__main__":
    sys.exit(main())
