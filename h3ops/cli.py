"""`h3ops <command> …`: one console script; each command lives with the package that owns it.

The table maps a command to the module whose `main(argv)` runs it. Modules are imported only when
their command is used, so `h3ops merge` never pays for Airflow or MLflow imports.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # command: (module, one-line help)
    "data": ("alignment.cli", "validate and build preference datasets"),
    "train": ("alignment.cli", "DPO-train one dimension (full or LoRA)"),
    "continual": ("alignment.cli", "sequential continual DPO over dimensions"),
    "mixture": ("alignment.cli", "data-mixture DPO baselines"),
    "merge": ("merging.cli", "merge checkpoints from a mergekit-style YAML"),
    "diagnose": ("merging.cli", "task-vector conflict diagnostics"),
    "eval": ("evaluation.cli", "run a 3H evaluation suite on a checkpoint"),
    "score": ("evaluation.cli", "aggregate per-benchmark metrics into 3H scores"),
    "gate": ("evaluation.cli", "decide promotion from score tables"),
    "register": ("registry.cli", "register a checkpoint folder in MLflow"),
    "versions": ("registry.cli", "list registered versions with lineage"),
    "compare": ("registry.cli", "compare versions' scores"),
    "promote": ("registry.cli", "gate and move the production alias"),
    "rollback": ("registry.cli", "move production back to the previous version"),
    "config": ("h3ops.config_checks", "check a pipeline config (merge, DPO via TRL) without running it"),
    "step": ("h3ops.pipeline", "run one pipeline step (what a DAG task runs)"),
    "demo": ("h3ops.demo", "run the whole loop on the embedded default"),
    "up": ("infra.local.stack", "start the local stack"),
    "down": ("infra.local.stack", "stop the local stack"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items())
    return f"usage: h3ops <command> [args]\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"h3ops: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main([name, *rest]) or 0)


if __name__ == "__main__":
    sys.exit(main())
