"""Suite definitions: versioned YAML files listing benchmarks with dimension, kind, source, rows,
limit and scale. Loading validates every field (errors name the suite, benchmark and field) and
registers the scoring view with `evaluation.scoring.register_suite`.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from evaluation import judge_prompts, judge_select, scoring
from h3ops import safe_yaml
from evaluation.data import SOURCES

SUITES_DIR = Path(__file__).with_name("suites")
DEFAULT_GENERATION = {"max_new_tokens": 64, "batch_size": 8, "chat": True, "dtype": "float32"}
_KIND_FIELDS = {
    "lm_eval_choice": ("source", "format"), "lm_eval_generate": ("source", "format"),
    "lm_eval_builtin": ("source", "metric"), "code": ("source",), "refusal": ("source", "expect"),
    "mt_bench": ("source",), "judged": ("source", "judge_prompt"),
}


class SuiteError(ValueError):
    """A suite that does not exist or whose definition is malformed."""


def available() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(name: str | Path) -> dict:
    """A suite by registered name (`cpu-3h`, `full-3h`) or by path to a YAML file."""
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = SUITES_DIR / f"{name}.yaml"
        if not path.is_file():
            raise SuiteError(f"unknown suite {str(name)!r}; available: {available()} (or a path to a suite YAML)")
    try:
        data = safe_yaml.load_file(path)
    except yaml.YAMLError as e:
        raise SuiteError(f"{path}: not valid YAML ({e})") from e
    return validate(data, str(path))


def validate(data, where: str) -> dict:
    from evaluation.benchmarks import FORMATS, KINDS

    if not isinstance(data, dict):
        raise SuiteError(f"{where}: a suite must be a mapping")
    for f in ("name", "version", "benchmarks"):
        if f not in data:
            raise SuiteError(f"{where}: missing field {f!r}")
    if not isinstance(data["benchmarks"], list) or not data["benchmarks"]:
        raise SuiteError(f"{where}: 'benchmarks' must be a non-empty list")
    gen = {**DEFAULT_GENERATION, **(data.get("generation") or {})}
    unknown_gen = sorted(set(gen) - set(DEFAULT_GENERATION))
    if unknown_gen:
        raise SuiteError(f"{where}: unknown generation setting(s) {unknown_gen}")
    seen = set()
    for i, b in enumerate(data["benchmarks"]):
        at = f"{where}: benchmarks[{i}]"
        if not isinstance(b, dict):
            raise SuiteError(f"{at}: must be a mapping")
        for f in ("key", "dimension", "kind"):
            if f not in b:
                raise SuiteError(f"{at}: missing field {f!r}")
        at = f"{where}: benchmark {b['key']!r}"
        if b["key"] in seen:
            raise SuiteError(f"{at}: listed twice")
        seen.add(b["key"])
        if b["dimension"] not in scoring.DIMENSIONS:
            raise SuiteError(f"{at}: dimension {b['dimension']!r} not one of {list(scoring.DIMENSIONS)}")
        if b["kind"] not in KINDS:
            raise SuiteError(f"{at}: unknown kind {b['kind']!r}; known: {sorted(KINDS)}")
        for f in _KIND_FIELDS[b["kind"]]:
            if f not in b:
                raise SuiteError(f"{at}: kind {b['kind']!r} needs field {f!r}")
        src = b.get("source")
        if isinstance(src, str) and src not in SOURCES:
            raise SuiteError(f"{at}: unknown source {src!r}; known: {sorted(SOURCES)}")
        if src is not None and not isinstance(src, str):
            raise SuiteError(f"{at}: source must be a source name; Hub datasets are pinned in "
                             "evaluation/hub_datasets.yaml and named hub/<key>")
        if b["kind"] == "lm_eval_builtin" and not str(src).startswith("hub/"):
            raise SuiteError(f"{at}: an lm-eval built-in task reads a pinned dataset (source: hub/<key>)")
        for role in ("judge", "safety_judge"):
            if role in b:
                try:
                    judge_select.normalise(b[role])
                except ValueError as e:
                    raise SuiteError(f"{at}: field {role!r}: {e}") from e
        prompts = {"judged": judge_prompts.VERDICT_PROMPTS, "refusal": ("or_bench",)}.get(b["kind"], ())
        if "judge_prompt" in b and b["judge_prompt"] not in prompts:
            raise SuiteError(f"{at}: judge_prompt {b['judge_prompt']!r} is not one of {sorted(prompts)} for kind {b['kind']!r}")
        if "format" in b and b["format"] not in FORMATS:
            raise SuiteError(f"{at}: unknown format {b['format']!r}; known: {sorted(FORMATS)}")
        if b.get("expect", "refuse") not in ("refuse", "comply"):
            raise SuiteError(f"{at}: expect must be 'refuse' or 'comply'")
        lim = b.get("limit")
        if lim is not None and (not isinstance(lim, int) or lim < 1):
            raise SuiteError(f"{at}: limit must be a positive integer")
    return {**data, "generation": gen, "judge": data.get("judge", "minilm")}


def scoring_suite(defn: dict) -> scoring.Suite:
    """The scoring view (keys per dimension, ranges), registered under the suite's name."""
    dims = {d: tuple(b["key"] for b in defn["benchmarks"] if b["dimension"] == d) for d in scoring.DIMENSIONS}
    ranges = {b["key"]: (0.0, 10.0) if b.get("scale") == "1-10" else (0.0, 100.0) for b in defn["benchmarks"]}
    try:
        suite = scoring.Suite(name=defn["name"], benchmarks=dims, ranges=ranges, version=str(defn["version"]),
                              description=defn.get("description", ""))
    except scoring.ScoringError as e:
        raise SuiteError(str(e)) from e
    try:
        return scoring.register_suite(suite)
    except scoring.ScoringError as e:
        raise SuiteError(f"suite {defn['name']!r} clashes with a registered scoring suite: {e}") from e
