"""`h3ops step <name> --config FILE --inputs JSON`: run one pipeline step, print its JSON result.

This is the CLI twin of what a DAG task runs in-process: the same function, the same inputs.
A Celery GPU worker or a Kubernetes pod runs exactly this command line.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from h3ops.cliparser import Parser
from h3ops.config import ConfigError, PipelineConfig, load_config
from h3ops.steps import STEPS, _load_all, get_step


def run_step(name: str, cfg: PipelineConfig | str, inputs: dict[str, Any] | None = None) -> Any:
    """Call step `name` with the config and keyword inputs (what every operator does)."""
    if not isinstance(cfg, PipelineConfig):
        cfg = load_config(cfg)
    fn = get_step(name)
    try:
        return fn(cfg, **(inputs or {}))
    except TypeError as e:
        # A wrong input name is a usage error: say which step and what it takes.
        if fn.__name__ in str(e):
            import inspect
            raise TypeError(f"step {name!r}: {e}; signature {inspect.signature(fn)}") from None
        raise


def _parser() -> argparse.ArgumentParser:
    _load_all()
    p = Parser(prog="h3ops step", description=__doc__.splitlines()[0],
               example='h3ops step merge --config examples/tiny.yaml --inputs \'{"candidates": ["models:/tiny-candidates/1"]}\'')
    p.add_argument("name", choices=sorted(STEPS))
    p.add_argument("--config", required=True, help="pipeline YAML")
    p.add_argument("--inputs", default="{}", help="JSON object of the step's keyword inputs")
    p.add_argument("--output", help="also write the JSON result to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "step":
        argv = argv[1:]
    args = _parser().parse_args(argv)
    try:
        inputs = json.loads(args.inputs)
        if not isinstance(inputs, dict):
            raise ValueError("--inputs must be a JSON object")
        result = run_step(args.name, args.config, inputs)
    except (ConfigError, ValueError, KeyError, FileNotFoundError, LookupError) as e:
        print(f"h3ops step {args.name}: {e}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2, sort_keys=True, default=str)
    print(text)
    if args.output:
        from pathlib import Path
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
