"""`h3ops merge CONFIG.yaml OUT_DIR [...]` (and `h3ops diagnose …`, owned by merging.diagnostics)."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from h3ops.checkpoint import CheckpointError
from h3ops.cliparser import Parser, add_json
from h3ops.suggest import did_you_mean
from merging.method import MergeConfigError


# mergekit-yaml flags that mean nothing here (h3ops always streams lazily, never unpickles by
# default, keeps a low memory profile): accepted so a mergekit command line runs, with a note.
NO_OP_FLAGS = {
    "--lazy-unpickle": "h3ops reads safetensors lazily always; pickle needs --allow-pickle",
    "--low-cpu-memory": "h3ops streams one tensor at a time always",
    "--copy-tokenizer": "h3ops writes the tokenizer always (tokenizer_source / tokenizer: pick or build it)",
    "--write-model-card": "h3ops writes README.md and mergekit_config.yml always",
}
# mergekit flags with an h3ops equivalent of another name, or none: refused with that said.
REFUSED_FLAGS = {
    "--allow-crimes": "h3ops refuses mismatched architectures; there is no override",
    "--lora-merge-cache": "h3ops merges full checkpoints only; merge LoRA adapters into their base first",
    "--transformers-cache": "h3ops does not download models; give local folders",
    "--trust-remote-code": "use --allow-remote-code (h3ops copies auto_map code into the output, never runs it)",
    "--no-copy-tokenizer": "h3ops always copies the tokenizer files",
}

EXAMPLE = """h3ops merge ties.yaml ./merged --seed 0 --max-shard-size 5B
(mergekit-yaml's --cuda, --out-shard-size, --random-seed, --lazy-unpickle and --copy-tokenizer
are accepted too; sizes read 5B as 5 billion bytes like mergekit, 2GB/500MiB as bytes)"""


def _merge_parser() -> argparse.ArgumentParser:
    p = Parser(prog="h3ops merge", description="Merge checkpoints from a mergekit-style YAML.", example=EXAMPLE)
    p.add_argument("config", help="merge config (mergekit YAML: merge_method, base_model, models, parameters, …)")
    p.add_argument("out_dir", help="output checkpoint folder (written atomically)")
    p.add_argument("--seed", "--random-seed", type=int, default=0,
                   help="seed for DARE/DELLA masks, recorded in h3ops.json (default: 0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--cuda", action="store_const", const="cuda", dest="device", help="same as --device cuda")
    p.add_argument("--max-shard-size", "--out-shard-size", default="2GB",
                   help="bytes per output shard: 5B (5 billion, as mergekit), 2GB, 500MB, 1GiB (default: 2GB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--allow-pickle", action="store_true", help="also read pytorch_model.bin checkpoints (unsafe)")
    p.add_argument("--allow-remote-code", action="store_true",
                   help="accept inputs with *.py files or auto_map in config.json (copied to the output)")
    p.add_argument("--diagnostics", action="store_true",
                   help="also write diagnostics.json (sign conflicts, delta norms, sparsity; α_t, k_l, STI for "
                        "tsvm/r_tsvm) into the output folder and print a per-layer-type summary")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    add_json(p)
    for flag in NO_OP_FLAGS:
        p.add_argument(flag, action="append_const", const=flag, dest="no_ops", help=argparse.SUPPRESS)
    return p


def _known_flags(p: argparse.ArgumentParser) -> list[str]:
    return [s for a in p._actions for s in a.option_strings]


def _refused(argv: list[str], p: argparse.ArgumentParser) -> str | None:
    """The message for a mergekit flag h3ops refuses, or for an unknown flag with a suggestion."""
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag in REFUSED_FLAGS:
            return f"{flag}: {REFUSED_FLAGS[flag]}"
        if flag.startswith("--") and flag not in _known_flags(p):
            return f"unknown option {flag}{did_you_mean(flag, _known_flags(p))}"
    return None


def merge_main(argv: list[str]) -> int:
    p = _merge_parser()
    refused = _refused(argv, p)
    if refused:
        print(f"h3ops merge: error: {refused}", file=sys.stderr)
        return 2
    args = p.parse_args(argv)
    for flag in args.no_ops or []:
        print(f"h3ops merge: note: {flag} has no effect: {NO_OP_FLAGS[flag]}", file=sys.stderr)
    from merging.engine import MergeError, merge

    try:
        out = merge(args.config, args.out_dir, seed=args.seed, device=args.device, max_shard_size=args.max_shard_size,
              overwrite=args.overwrite, allow_pickle=args.allow_pickle,
              allow_remote_code=args.allow_remote_code, progress=False if args.no_progress else None,
              diagnostics=args.diagnostics)
    except (MergeConfigError, MergeError, CheckpointError, FileExistsError, ValueError) as e:
        print(f"h3ops merge: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        import json

        from h3ops.checkpoint import read_manifest

        m = read_manifest(out)
        print(json.dumps({"checkpoint": str(out), "method": m.method, "seed": m.seed, "parents": m.parents},
                         indent=2))
    elif args.diagnostics:  # the library logs the summary; the command shows it
        import json
        from pathlib import Path

        from merging.diagnostics import DIAGNOSTICS, format_summary
        print(format_summary(json.loads((Path(out) / DIAGNOSTICS).read_text())["summary"]))
    return 0


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("merge", [])
    if command == "diagnose":
        if importlib.util.find_spec("merging.diagnostics") is None:
            print("h3ops diagnose: not available (merging.diagnostics is not installed)", file=sys.stderr)
            return 2
        return int(importlib.import_module("merging.diagnostics").main(argv) or 0)
    if command != "merge":
        print(f"merging.cli: unknown command {command!r}", file=sys.stderr)
        return 2
    return merge_main(rest)


if __name__ == "__main__":
    sys.exit(main(["merge", *sys.argv[1:]]))
