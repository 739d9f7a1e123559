"""Checks of a pipeline config against the code that will run it, and `h3ops config check FILE`.

At load (validate_config): the merge method, its parameters and dtype through the merge engine's own
declarations (merging.method's registry), the DPO preset and overrides through alignment's
DPOSettings, the evaluation suite through evaluation's suite loader — so a typo fails before hours
of training, not at the merge or evaluation step after them.

The declarations, including cross-parameter checks such as TIES' density range, live in the method
modules, which import torch; a copy here would drift. A process without torch (the sensor, the
triggerer, ingest and gate tasks, the CLI) must not pay 1.5 s and 200 MB for it on every load, so
the merge check runs in a child interpreter and its answer is cached by (merging's source digest,
merge section, model count): the first load of a new merge section costs ~1.5 s of a child, later
loads read one small file (bench/README.md). A process that already has torch checks in-process.

`h3ops config check` (and the train step, before loading any model) also builds TRL's DPOConfig
from the settings: TRL and transformers take ~10 s to import, too slow for every config load.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import typing
from pathlib import Path
from typing import Any

Problem = tuple[str, str]  # (dotted field, what is wrong)


def did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _closest(word: str, options: list[str]) -> str | None:
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    return close[0] if close else None


def _merging_code_digest() -> str:
    import importlib.util

    root = Path(importlib.util.find_spec("merging").origin).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def _cache_dir() -> Path:
    return Path(os.environ.get("H3OPS_CACHE") or Path.home() / ".cache" / "h3ops") / "config-checks"


_CHILD = ("import json, sys; from h3ops.config_checks import merge_problems_here as check; "
          "print(json.dumps(check(json.loads(sys.argv[1]), int(sys.argv[2]))))")


def merge_problems(merge: Any, n_models: int) -> list[Problem]:
    """merge_problems_here, in a child interpreter unless torch is already loaded; cached."""
    if not isinstance(merge, dict):
        return []
    if "torch" in sys.modules:
        return merge_problems_here(merge, n_models)
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        # An Airflow-only environment (no ML stack): the ML tasks that merge load the config too,
        # and check it there before any training.
        return []
    from h3ops.atomic import write_json
    from h3ops.digest import digest_json

    text = json.dumps(merge, sort_keys=True, default=str)
    cache = _cache_dir() / f"{digest_json([_merging_code_digest(), text, n_models]).split(':')[1][:32]}.json"
    try:
        return [tuple(p) for p in json.loads(cache.read_text())]
    except (OSError, ValueError):
        pass
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    res = subprocess.run([sys.executable, "-c", _CHILD, text, str(n_models)], capture_output=True, text=True,
                         env=env, timeout=300)
    if res.returncode != 0:  # the engine itself is broken: say so rather than pass the config unchecked
        return [("merge", f"could not be checked against the merge engine: {res.stderr.strip()[-300:]}")]
    problems = [tuple(p) for p in json.loads(res.stdout.strip().splitlines()[-1])]
    try:
        write_json(cache, problems)
    except OSError:
        pass  # an unwritable cache only costs the next load another child
    return problems


def merge_problems_here(merge: Any, n_models: int) -> list[Problem]:
    from merging.config import DTYPE_NAMES
    from merging.method import MergeConfigError, available_methods, get_method

    if not isinstance(merge, dict):
        return []
    out: list[Problem] = []
    method_name = merge.get("method", "r_tsvm")
    names = available_methods()
    if isinstance(method_name, str) and method_name not in names:
        out.append(("merge.method", f"unknown merge method {method_name!r}{did_you_mean(method_name, names)} "
                                    f"(available: {', '.join(names)})"))
        # Check the parameters against the method the user most likely meant.
        method_name = _closest(method_name, names)
    dtype = merge.get("dtype")
    if dtype is not None and (not isinstance(dtype, str) or dtype.lower() not in DTYPE_NAMES):
        out.append(("merge.dtype", f"unknown dtype {dtype!r}{did_you_mean(dtype, list(DTYPE_NAMES))} "
                                   "(use float32, float16 or bfloat16)"))
    params = merge.get("parameters") or {}
    if not isinstance(method_name, str) or not isinstance(params, dict):
        return out
    method = get_method(method_name)
    declared = {p.name: p for p in method.params}
    where = f"merge method {method_name}"
    ok = {}
    for key, value in params.items():
        if key not in declared:
            out.append((f"merge.parameters.{key}", f"not a parameter of {where}{did_you_mean(key, list(declared))} "
                                                   f"(known: {', '.join(sorted(declared))})"))
            continue
        try:
            ok[key] = declared[key].coerce(value, where)
        except MergeConfigError as e:
            out.append((f"merge.parameters.{key}", str(e)))
    if len(ok) == len(params):
        try:  # defaults, required parameters, model counts and the method's cross-parameter checks
            method.resolve(ok, [{} for _ in range(max(n_models, 1))])
        except MergeConfigError as e:
            named = [k for k in declared if re.search(rf"\b{re.escape(k)}\b", str(e))]
            out.append((f"merge.parameters.{named[0]}" if named else "merge.parameters", str(e)))
    return out


def _fits(value: Any, hint: Any) -> bool:
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in (int, str, bool):
        return isinstance(value, hint) and (hint is bool or not isinstance(value, bool))
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(item is Any or _fits(v, item) for v in value)
    return True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def dpo_problems(dpo: Any) -> list[Problem]:
    from alignment.dpo import PRESETS, DPOSettings

    if not isinstance(dpo, dict):
        return []
    out: list[Problem] = []
    preset = dpo.get("preset")
    if preset is not None and preset not in PRESETS:
        out.append(("dpo.preset", f"unknown preset {preset!r}{did_you_mean(preset, list(PRESETS))} "
                                  f"(known: {', '.join(PRESETS)})"))
    overrides = dpo.get("overrides") or {}
    if not isinstance(overrides, dict):
        return out
    hints = typing.get_type_hints(DPOSettings)
    hints = {k: v for k, v in hints.items() if not k.startswith("_")}
    for key, value in overrides.items():
        if key not in hints:
            out.append((f"dpo.overrides.{key}", f"not a DPO setting{did_you_mean(key, list(hints))} "
                                                f"(known: {', '.join(sorted(hints))})"))
        elif not _fits(value, hints[key]):
            out.append((f"dpo.overrides.{key}", f"must be {_type_name(hints[key])}, got "
                                                f"{type(value).__name__} {value!r}"))
    if not out:
        try:
            settings(preset, overrides)
        except (TypeError, ValueError) as e:
            out.append(("dpo.overrides", str(e)))
    return out


def settings(preset: str | None, overrides: dict[str, Any]):
    from alignment.dpo import DPOSettings

    return DPOSettings.preset(preset, **overrides) if preset else DPOSettings.from_dict(dict(overrides))


def evaluation_problems(evaluation: Any) -> list[Problem]:
    """The suite by name or YAML path, loaded and validated as the evaluation step will."""
    from evaluation.suites_def import SuiteError, available, load_suite

    suite = evaluation.get("suite", "cpu-3h") if isinstance(evaluation, dict) else None
    if not isinstance(suite, str):
        return []
    try:
        load_suite(suite)
    except SuiteError as e:
        return [("evaluation.suite", f"{e}{did_you_mean(suite, available())}")]
    return []


def domain_problems(data: dict[str, Any]) -> list[Problem]:
    """Everything the typed models cannot know: checked against the merge engine, alignment's DPO
    settings and evaluation's suites."""
    dims = data.get("dimensions")
    n_models = len(dims) if isinstance(dims, list) else 1
    return (merge_problems(data.get("merge", {}), n_models) + dpo_problems(data.get("dpo", {}))
            + evaluation_problems(data.get("evaluation", {})))


def trl_problems(cfg) -> list[Problem]:
    """Build TRL's DPOConfig from the config's DPO settings (what training will hand to TRL)."""
    from alignment.dpo import trl_config

    s = settings(cfg.dpo.preset, cfg.dpo.overrides)
    try:
        with tempfile.TemporaryDirectory(prefix="h3ops-check-") as tmp:
            trl_config(Path(tmp), s)
    except Exception as e:  # noqa: BLE001 - any refusal by TRL/transformers is a config problem
        msg = f"TRL's DPOConfig refuses the settings ({type(e).__name__}: {e})"
        named = [k for k, v in cfg.dpo.overrides.items() if str(v) in str(e)]
        return [(f"dpo.overrides.{named[0]}" if named else "dpo", msg)]
    return []


def main(argv: list[str]) -> int:
    """`h3ops config check FILE`: every check, TRL included; one JSON line on success."""
    from h3ops.config import ConfigError, load_config
    from h3ops.safe_yaml import clip

    from h3ops.cliparser import Parser

    p = Parser(prog="h3ops config", description="Check a pipeline config: every field, the merge method and its "
               "parameters, the DPO settings through TRL's DPOConfig, the suite and the gate policy.",
               example="h3ops config check examples/smollm2.yaml")
    p.add_argument("action", choices=("check", "validate"))
    p.add_argument("file", help="pipeline YAML")
    path = p.parse_args(argv[1:] if argv and argv[0] == "config" else argv).file
    try:
        cfg = load_config(path)
        problems = trl_problems(cfg)
        if problems:
            raise ConfigError(f"{path}: invalid pipeline config\n"
                              + "\n".join(f"  {f}: {clip(m)}" for f, m in problems))
    except ConfigError as e:
        print(f"h3ops config: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"config": str(path), "ok": True, "project": cfg.project, "merge": cfg.merge.method,
                      "dimensions": [d.name for d in cfg.dimensions]}))
    return 0
