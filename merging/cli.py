"""`h3ops merge CONFIG.yaml OUT_DIR [...]` (and `h3ops diagnose …`, owned by merging.diagnostics)."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from h3ops.checkpoint import CheckpointError
from merging.method import MergeConfigError


def _merge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="h3ops merge", description="Merge checkpoints from a mergekit-style YAML.")
    p.add_argument("config", help="merge config (mergekit YAML: merge_method, base_model, models, parameters, …)")
    p.add_argument("out_dir", help="output checkpoint folder (written atomically)")
    p.add_argument("--seed", type=int, default=0, help="seed for DARE/DELLA masks (recorded in h3ops.json)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--max-shard-size", default="2GB", help="e.g. 2GB, 500MB, 1GiB")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--allow-pickle", action="store_true", help="also read pytorch_model.bin checkpoints (unsafe)")
    p.add_argument("--allow-remote-code", action="store_true",
                   help="accept inputs with *.py files or auto_map in config.json (copied to the output)")
    p.add_argument("--diagnostics", action="store_true",
                   help="also write diagnostics.json (sign conflicts, delta norms, sparsity; α_t, k_l, STI for "
                        "tsvm/r_tsvm) into the output folder and print a per-layer-type summary")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    return p


def merge_main(argv: list[str]) -> int:
    args = _merge_parser().parse_args(argv)
    from merging.engine import MergeError, merge

    try:
        merge(args.config, args.out_dir, seed=args.seed, device=args.device, max_shard_size=args.max_shard_size,
              overwrite=args.overwrite, allow_pickle=args.allow_pickle,
              allow_remote_code=args.allow_remote_code, progress=False if args.no_progress else None,
              diagnostics=args.diagnostics)
    except (MergeConfigError, MergeError, CheckpointError, FileExistsError, ValueError) as e:
        print(f"h3ops merge: error: {e}", file=sys.stderr)
        return 2
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
