"""`run_suite`: evaluate one checkpoint on a suite, cached by (model digest, suite digest, benchmark).

The suite digest covers the suite definition, the data files' digests, the limit, the judge, the
generation settings and the harness version, so any change re-evaluates and an unchanged model
costs nothing. Each finished benchmark is cached on its own (a crash keeps what finished); the
result JSON is written only when every benchmark finished, so there is never a partial result.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from h3ops.checkpoint import CheckpointError, atomic_output_dir, weight_files
from h3ops.digest import digest_dir, digest_json, short

HARNESS_VERSION = "1"


class EvalError(RuntimeError):
    """Evaluation could not produce a complete result; nothing was written."""


@dataclass
class EvalResult:
    model: str
    model_digest: str
    suite: str
    suite_digest: str
    metrics: dict[str, float]
    scores: object  # evaluation.scoring.Scores
    details_dir: Path
    settings: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    cached: bool = False

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["scores"] = self.scores.to_dict()
        d["details_dir"] = str(self.details_dir)
        return d

    def mlflow_payload(self) -> dict:
        """What an MLflow evaluation run logs: flat metrics, params and tags."""
        metrics = {**{f"eval.{k}": v for k, v in self.metrics.items()}, **self.scores.averages()}
        params = {"suite": self.suite, "limit": self.settings.get("limit"), "judge": self.settings.get("judge")}
        tags = {"h3ops.eval.suite_digest": self.suite_digest, "h3ops.eval.model_digest": self.model_digest,
                "h3ops.eval.scoring_digest": self.scores.suite_digest}
        return {"metrics": metrics, "params": params, "tags": tags}


def default_cache_dir() -> Path:
    return Path(os.environ.get("H3OPS_EVAL_CACHE", Path.home() / ".cache" / "h3ops" / "eval"))


class Context:
    """What benchmark kinds need, created on first use so a fully cached run loads nothing."""

    def __init__(self, model_path: Path, generation: dict, judge: str, limit: int | None, work: Path, device: str):
        self.model_path, self.generation, self.judge_spec = model_path, generation, judge
        self.limit, self.work, self.device = limit, work, device
        self._model = self._lm = self._judge = self._box = None

    def model(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.model_path)
            model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=getattr(torch, self.generation["dtype"]))
            self._model = (model.to(self.device).eval(), tok)
        return self._model

    def lm(self):
        if self._lm is None:
            from evaluation.lmeval import hflm

            self._lm = hflm(*self.model(), batch_size=self.generation["batch_size"], device=self.device)
        return self._lm

    def judge(self):
        if self._judge is None:
            from evaluation.judges import get_judge

            self._judge = get_judge(self.judge_spec)
        return self._judge

    def sandbox(self):
        if self._box is None:
            from evaluation.sandbox import Sandbox

            # Degraded execution (no namespaces: rlimits and timeout only) is an explicit opt-in;
            # every code record then says isolation was degraded.
            self._box = Sandbox(allow_degraded=os.environ.get("H3OPS_SANDBOX_ALLOW_DEGRADED") == "1")
        return self._box


def _check_model(model: Path) -> None:
    if not model.is_dir():
        raise EvalError(f"{model}: model folder does not exist")
    if not (model / "config.json").is_file():
        raise EvalError(f"{model}: not a Hugging Face checkpoint (no config.json)")
    try:
        weight_files(model)
    except CheckpointError as e:
        raise EvalError(str(e)) from e


def plan(suite: str | Path, limit: int | None, judge: str | None) -> tuple[dict, dict, str]:
    """(suite definition, settings, suite digest) — everything that decides the numbers."""
    from evaluation import data
    from evaluation.suites_def import scoring_suite, load_suite

    defn = load_suite(suite)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise EvalError(f"limit must be a positive integer, got {limit!r}")
    judge = judge or defn["judge"]
    scoring_suite(defn)
    sources = {json.dumps(b["source"], sort_keys=True) if isinstance(b.get("source"), dict) else b.get("source")
               for b in defn["benchmarks"]} - {None}
    data_digests = {s: (data.source(s).digest() if not s.startswith("{") else "hub") for s in sorted(sources)}
    settings = {"limit": limit, "judge": judge, "generation": defn["generation"], "harness": HARNESS_VERSION}
    digest = digest_json({"suite": defn, "data": data_digests, **settings})
    return defn, {**settings, "data_digests": data_digests}, digest


def scores_digest(suite: str | Path, limit: int | None = None, judge: str | None = None) -> str:
    """The suite digest run_suite's scores will carry for these settings, computed without running:
    what cached scores are looked up by (with the model's content digest)."""
    from evaluation.scoring import measured_digest

    defn, _, run_digest = plan(suite, limit, judge)
    return measured_digest(defn["name"], run_digest)


def _bench_limit(bench: dict, limit: int | None) -> int | None:
    own = bench.get("limit")
    return min(x for x in (own, limit) if x is not None) if (own or limit) else None


def run_suite(model: str | Path, suite: str | Path = "cpu-3h", *, limit: int | None = None, judge: str | None = None,
              cache_dir: str | Path | None = None, out_dir: str | Path | None = None, device: str = "cpu") -> EvalResult:
    """Evaluate `model` (a checkpoint folder) on `suite`; see the module docstring for caching."""
    from evaluation import benchmarks, data
    from evaluation.scoring import aggregate

    model = Path(model).resolve()
    _check_model(model)
    defn, settings, suite_digest = plan(suite, limit, judge)
    model_digest = digest_dir(model)
    cache = Path(cache_dir or default_cache_dir()) / short(model_digest) / short(suite_digest)
    details = cache / "details"
    details.mkdir(parents=True, exist_ok=True)
    ctx = Context(model, defn["generation"], settings["judge"], limit, details, device)
    metrics, timings, all_cached = {}, {}, True
    for bench in defn["benchmarks"]:
        key, done = bench["key"], cache / f"{bench['key']}.json"
        if done.is_file():
            metrics[key] = json.loads(done.read_text())["metric"]
            continue
        all_cached = False
        t0 = time.monotonic()
        try:
            items = data.load_items(bench["source"], bench.get("rows"), _bench_limit(bench, limit)) \
                if "source" in bench else []
            value, records = benchmarks.KINDS[bench["kind"]](ctx, bench, items)
        except Exception as e:
            raise EvalError(f"benchmark {key!r} of suite {defn['name']!r} failed: {type(e).__name__}: {e}; "
                            "no result written") from e
        timings[key] = round(time.monotonic() - t0, 2)
        part = details / f"{key}.jsonl.tmp-{os.getpid()}"
        part.write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
        part.rename(details / f"{key}.jsonl")
        tmp = done.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"metric": value, "n": len(records), "wall_s": timings[key]}))
        tmp.rename(done)  # atomic: a benchmark is cached only once complete
        metrics[key] = value
    scores = aggregate(metrics, defn["name"], run_digest=suite_digest)
    result = EvalResult(str(model), model_digest, defn["name"], suite_digest, metrics, scores, details,
                        settings, timings, cached=all_cached)
    if out_dir is not None:
        write_result(result, Path(out_dir))
    return result


def write_result(result: EvalResult, out: Path) -> Path:
    """result.json plus a copy of the per-item details, renamed into place when complete."""
    import shutil

    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "result.json").write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")
        shutil.copytree(result.details_dir, tmp / "details")
    return out / "result.json"
