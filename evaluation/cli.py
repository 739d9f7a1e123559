"""`h3ops eval | score | gate`: the CLI twins of run_suite, scoring.aggregate and gate.decide."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from h3ops.cliparser import Parser, add_json


def _suite_for(name: str | None):
    """A scoring suite by name; YAML suites (cpu-3h, …) are registered on first use."""
    from evaluation import scoring
    from evaluation.suites_def import available, load_suite, scoring_suite

    if name and (name in available() or Path(name).suffix in (".yaml", ".yml")):
        return scoring_suite(load_suite(name))
    return scoring.get_suite(name)


def _read_scores(path: str, suite: str | None):
    """Scores from a result.json (run_suite's) or a plain {benchmark: metric} JSON."""
    from evaluation.scoring import aggregate

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"h3ops: cannot read scores from {path}: {e}")
    if not isinstance(data, dict):
        raise SystemExit(f"h3ops: {path}: expected a JSON object of metrics or a result.json")
    if "metrics" in data and isinstance(data["metrics"], dict):
        return aggregate(data["metrics"], _suite_for(suite or data.get("suite")))
    return aggregate(data, _suite_for(suite))


def _version_of(args):
    """The registered version --model-version names, refused unless FOLDER is its content."""
    from h3ops.digest import digest_dir
    from registry.api import Registry

    from evaluation.runner import EvalError

    if not Path(args.model).is_dir():
        raise EvalError(f"{args.model}: model folder does not exist")
    reg = Registry(args.tracking_uri)
    ref = reg.resolve(args.model_version)
    want, have = ref.tags.get("h3ops.content_digest"), digest_dir(args.model)
    if want != have:
        raise EvalError(f"{args.model} has content {have}, but {ref.uri} holds {want}: scores belong to the "
                        "content they were measured on; evaluate the version's own files (nothing was evaluated "
                        "or logged)")
    return reg, ref


def cmd_eval(args) -> int:
    from evaluation.runner import run_suite

    # Checked before evaluating: a mismatch costs nothing and leaves nothing behind.
    reg, ref = _version_of(args) if args.model_version else (None, None)
    res = run_suite(args.model, args.suite, limit=args.limit, judge=args.judge, cache_dir=args.cache_dir,
                    out_dir=args.out, device=args.device)
    run_id = None
    if ref is not None:
        # The registry owns MLflow: it logs an evaluation run linked to the version (tags, metrics).
        with contextlib.redirect_stdout(sys.stderr):  # MLflow's "View run" lines are not our result
            run_id = reg.log_evaluation(ref, dict(res.metrics), res.scores, res.scores.suite_digest,
                                        details_dir=res.details_dir, model_digest=res.model_digest)
    if args.json:
        print(json.dumps({"metrics": res.metrics, **res.scores.averages(), "suite": res.suite,
                          "suite_digest": res.suite_digest, "model_digest": res.model_digest, "cached": res.cached,
                          "result": str(Path(args.out) / "result.json") if args.out else None,
                          "mlflow_run_id": run_id, "model_version": args.model_version}, indent=2))
        return 0
    width = max(map(len, res.metrics))
    for k, v in res.metrics.items():
        print(f"{k:<{width}}  {v:7.2f}")
    for k, v in res.scores.averages().items():
        print(f"{k:<{width}}  {v:7.2f}")
    print(f"suite {res.suite} {res.suite_digest[:19]}…  model {res.model_digest[:19]}…"
          f"{'  (cached)' if res.cached else ''}")
    if args.out:
        print(f"result: {Path(args.out) / 'result.json'}")
    if run_id is not None:
        print(f"mlflow evaluation run {run_id} for {args.model_version}")
    return 0


def cmd_score(args) -> int:
    scores = _read_scores(args.metrics, args.suite)
    print(json.dumps(scores.to_dict(), indent=2))
    return 0


def cmd_gate(args) -> int:
    from evaluation.gate import decide
    from h3ops import safe_yaml

    policy = safe_yaml.load_file(args.policy) if args.policy else None  # before the scores: fail fast
    cand = _read_scores(args.candidate, args.suite)
    prod = _read_scores(args.production, args.suite) if args.production else None
    cont = [_read_scores(p, args.suite) for p in args.continual]
    decision = decide(cand, prod, cont, policy)
    print(json.dumps(decision.to_dict(), indent=2, default=str) if args.json else decision.summary())
    if args.out:
        Path(args.out).write_text(json.dumps(decision.to_dict(), indent=2, default=str) + "\n")
    return 0 if decision.passed else 1


EXAMPLES = {
    "eval": "h3ops eval ./merged --suite cpu-3h --limit 10 --model-version models:/proj-merged/3",
    "score": "h3ops score result.json",
    "gate": "h3ops gate merged.json --production prod.json --continual stage1.json stage2.json --out decision.json",
}


def parser(name: str) -> argparse.ArgumentParser:
    p = Parser(prog=f"h3ops {name}", example=EXAMPLES[name])
    if name == "eval":
        p.add_argument("model", help="checkpoint folder")
        p.add_argument("--suite", default="cpu-3h", help="suite name or YAML path (default cpu-3h)")
        p.add_argument("--limit", type=int, help="at most N items per benchmark")
        p.add_argument("--judge", help="keyword | minilm | http[:MODEL] (default: the suite's)")
        p.add_argument("--out", help="folder for result.json, metrics.json and per-item details")
        p.add_argument("--cache-dir", help="evaluation cache (default $H3OPS_EVAL_CACHE or ~/.cache/h3ops/eval)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--model-version", help="models:/NAME/VERSION: log an MLflow evaluation run linked to it")
        p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                       help="MLflow server for --model-version (default $MLFLOW_TRACKING_URI)")
        add_json(p)
    elif name == "score":
        p.add_argument("metrics", help="metrics JSON ({benchmark: value}) or a result.json")
        p.add_argument("--suite", help="suite name (default: the result's, else full-3h)")
    elif name == "gate":
        p.add_argument("candidate", help="candidate metrics/result JSON")
        p.add_argument("--production", help="production metrics/result JSON (none on a first run)")
        p.add_argument("--continual", nargs="*", default=[], help="continual-DPO stages' metrics/result JSONs")
        p.add_argument("--policy", help="gate policy YAML/JSON (margin, max_regression, rule)")
        p.add_argument("--suite", help="suite name (default: the results')")
        p.add_argument("--out", help="write the decision record here")
        add_json(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("eval", "score", "gate"):
        print("usage: h3ops eval|score|gate …", file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    args = parser(name).parse_args(rest)
    if name == "eval" and args.model_version and not args.tracking_uri:
        print("h3ops eval: error: --model-version needs --tracking-uri (or MLFLOW_TRACKING_URI)", file=sys.stderr)
        return 2
    from evaluation.data import DataError
    from evaluation.gate import GateError
    from evaluation.runner import EvalError
    from evaluation.scoring import ScoringError
    from evaluation.suites_def import SuiteError
    from h3ops.safe_yaml import YamlError
    from registry.api import RegistryError

    try:
        return {"eval": cmd_eval, "score": cmd_score, "gate": cmd_gate}[name](args)
    except (EvalError, SuiteError, ScoringError, GateError, DataError, RegistryError, YamlError) as e:
        print(f"h3ops {name}: error: {e}", file=sys.stderr)
        return 2
