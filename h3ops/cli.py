"""`h3ops <command> …`: one console script; each command lives with the package that owns it.

The table maps a command to the module whose `main(argv)` runs it. Modules are imported only when
their command is used, so `h3ops merge` never pays for Airflow or MLflow imports.

Exit codes, the same for every command:
  0  done (a check that ran and passed, a result printed)
  1  a check ran and failed (the gate refused, a stack service is down, a file was quarantined)
  2  usage or input error (unknown command or flag, a bad config, a missing file)
"""
from __future__ import annotations

import importlib
import os
import sys

from h3ops import __version__
from h3ops.suggest import did_you_mean

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

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
    "serve": ("serving.cli", "OpenAI-compatible server for the production model, following the alias"),
    "config": ("h3ops.config_checks", "check a pipeline config (merge, DPO via TRL) without running it"),
    "step": ("h3ops.pipeline", "run one pipeline step (what a DAG task runs)"),
    "demo": ("h3ops.demo", "run the whole loop on the embedded default"),
    "up": ("infra.local.stack", "start the local stack"),
    "down": ("infra.local.stack", "stop the local stack"),
    "status": ("infra.local.stack", "show which services of the local stack run, and their ports"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items())
    return (f"usage: h3ops <command> [args]   (h3ops <command> --help for its options)\n\n"
            f"commands:\n{rows}\n\nexit codes: 0 ok, 1 a check failed, 2 usage or input error\n"
            f"example: h3ops merge ties.yaml ./merged --max-shard-size 5B\n")


def _run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return EXIT_OK
    if argv[0] in ("-V", "--version", "version"):
        print(f"h3ops {__version__}")
        return EXIT_OK
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"h3ops: unknown command {name!r}{did_you_mean(name, COMMANDS)}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USAGE
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main([name, *rest]) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _run(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # `h3ops versions | head`: the reader left; that is not an error worth a traceback.
        # Point stdout at devnull so the interpreter's own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("h3ops: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
