"""`h3ops demo [--tiny]`: the whole continual alignment loop on the embedded default.

No servers: MLflow on SQLite with artifacts in a local folder, Airflow's metadata in SQLite and
every DAG executed with `dag.test()`, all under ./.h3ops/. The base (SmolLM2-135M-Instruct, or a
tiny Llama with --tiny) is the first production model; preference files built from the offline
data packages land in the landing folders, and the DAGs do the rest: ingest → continual-DPO
baseline → DPO per dimension → register → R-TSVM merge → register → cpu-3h evaluation → gate →
promotion (and the serving hand-off when it passes). Ends with a summary table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from h3ops import atomic
from h3ops.cliparser import Parser

ROOT = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="h3ops demo", description=__doc__.splitlines()[0], example="h3ops demo --tiny   # a 2-layer model, a few minutes")
    p.add_argument("--tiny", action="store_true", help="a 2-layer Llama instead of SmolLM2 (a fast run)")
    p.add_argument("--config", help="pipeline YAML (default: examples/smollm2.yaml, or tiny.yaml)")
    p.add_argument("--home", default=".h3ops", help="where everything is written (default ./.h3ops)")
    p.add_argument("--pairs", type=int, help="preference pairs per dimension (default 64, tiny 16)")
    p.add_argument("--steps", type=int, help="DPO steps per dimension (overrides the config)")
    p.add_argument("--limit", type=int, help="evaluation items per benchmark (overrides the config)")
    p.add_argument("--score-candidates", action="store_true",
                   help="also score the single-dimension candidates for the table (about 1 min each on "
                        "SmolLM2; the gate does not need them)")
    p.add_argument("--verbose", action="store_true",
                   help="show Airflow's and the libraries' logs here (default: only in HOME/demo.log)")
    return p


class Story:
    """The demo's own lines on the terminal; everything else (Airflow task logs, TRL, lm-eval,
    warnings, progress bars) goes to a log file, at the file-descriptor level so that subprocesses
    and C extensions are caught too. --verbose keeps both on the terminal."""

    def __init__(self, log_path: Path, verbose: bool):
        self.log_path, self.verbose = log_path, verbose
        self._term = os.dup(1)
        self._saved: list[int] = []

    def __enter__(self) -> "Story":
        sys.stdout.flush()
        sys.stderr.flush()
        if not self.verbose:
            log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            for fd in (1, 2):
                self._saved.append(os.dup(fd))
                os.dup2(log, fd)
            os.close(log)
        return self

    def __exit__(self, *exc) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self._saved):
            os.dup2(saved, fd)
            os.close(saved)

    def say(self, text: str = "") -> None:
        os.write(self._term, (text + "\n").encode())


def _environment(home: Path) -> None:
    """Airflow and MLflow self-contained under `home`, before either is imported."""
    os.environ.setdefault("AIRFLOW_HOME", str(home / "airflow"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__PARALLELISM", "4")
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("H3OPS_EVAL_CACHE", str(home / "eval-cache"))


def _config(args, home: Path):
    from h3ops.config import dump_config, load_config

    path = Path(args.config) if args.config else ROOT / "examples" / ("tiny.yaml" if args.tiny else "smollm2.yaml")
    cfg = load_config(path)
    over: dict = {
        "dimensions": [{"name": d.name, "landing": str((home / "landing" / d.name).resolve())} for d in cfg.dimensions],
        "workdir": str((home / "work").resolve()),
        "registry": {"tracking_uri": f"sqlite:///{(home / 'mlflow.db').resolve()}",
                     "artifact_location": str((home / "mlartifacts").resolve()),
                     "serving_manifest": str((home / "serving" / "production.json").resolve())},
    }
    if args.steps:
        over["dpo"] = {"overrides": {**cfg.dpo.overrides, "max_steps": args.steps}}
    if args.limit:
        over["evaluation"] = {"limit": args.limit}
    cfg = cfg.with_overrides(over)
    return cfg, dump_config(cfg, home / "pipeline.yaml")


def land_preferences(cfg, n: int) -> dict[str, Path]:
    """Write real pairs from the offline data packages into each landing folder (what an upstream
    data team would drop there). Rows are disjoint from what cpu-3h evaluates."""
    from alignment import demo_data

    makers = {"helpfulness": demo_data.helpfulness_pairs, "honesty": demo_data.honesty_pairs,
              "harmlessness": demo_data.harmlessness_pairs}
    out = {}
    for d in cfg.dimensions:
        folder = Path(d.landing)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"demo-{d.name}.jsonl"
        if not path.exists():
            rows = makers[d.name](n)
            atomic.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        out[d.name] = path
    return out


STAGES = {
    "preference_ingest": "validate the landed preference files, quarantine bad ones, build datasets",
    "continual_dpo_baseline": "sequential DPO over the dimensions (the baseline the gate must beat)",
    "continual_alignment": "DPO per dimension, merge, 3H evaluation, gate",
    "promote_to_serving": "hand the new production model to serving",
}


def _run(bag, dag_id: str, conf: dict, log: list, story: Story) -> None:
    story.say(f"▸ {dag_id}: {STAGES.get(dag_id, '')} …")
    t = time.perf_counter()
    dr = bag.dags[dag_id].test(run_conf=conf)
    state = str(getattr(dr.state, "value", dr.state))
    log.append((dag_id, state, time.perf_counter() - t))
    story.say(f"  {state} in {time.perf_counter() - t:.0f} s")
    if state != "success":
        story.say(f"h3ops demo: DAG {dag_id} ended {state}; task logs: {os.environ['AIRFLOW_HOME']}/logs, "
                  f"everything else: {story.log_path}")
        raise SystemExit(1)


def _row(reg, ref, role: str) -> list[str]:
    s = reg.get_scores(ref.uri)
    nums = [f"{getattr(s, k):6.2f}" if s else "     -" for k in ("helpful_avg", "honest_avg", "harmless_avg", "avg")]
    return [role, ref.uri, ref.tags.get("h3ops.method") or ref.tags.get("h3ops.kind", ""),
            ref.tags.get("h3ops.dimension") or "-", *nums]


def summary(cfg, decision: dict | None, timings: list) -> str:
    from h3ops.steps.common import registry

    reg = registry(cfg)
    prod, prev = reg.production(cfg.project), reg.previous_production(cfg.project)
    rows = [["role", "version", "method", "dimension", "helpful", "honest", "harmless", "avg"]]
    merged = reg.versions(cfg.project, "merged")
    for v in merged:
        marks = [m for m, r in (("production", prod), ("previous-production", prev)) if r and r.uri == v.uri]
        role = ("base" if v.tags.get("h3ops.method") == "base" else "merged") + (f" ({', '.join(marks)})" if marks else "")
        rows.append(_row(reg, v, role))
    for kind in ("candidate", "continual"):
        rows += [_row(reg, v, kind) for v in reg.versions(cfg.project, kind)]
    unscored = any(r[0] == "candidate" and r[-1].strip() == "-" for r in rows)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    out = [f"h3ops demo — project {cfg.project}, base {cfg.base_model}, merge {cfg.merge.method}, "
           f"suite {cfg.evaluation.suite} (limit {cfg.evaluation.limit})", "", *lines, ""]
    if unscored:
        out[-1:-1] = ["(- : a candidate the gate does not compare, not scored; `h3ops demo --score-candidates` "
                      "or `h3ops eval <version>` scores it)"]
    if decision:
        out += [decision.get("summary", f"gate passed={decision.get('passed')}"), ""]
    out += [f"production: {prod.uri if prod else '(none)'}"
            + (f"   previous-production: {prev.uri}" if prev else ""), ""]
    out += ["DAG runs: " + ", ".join(f"{d} {s} {t:.0f}s" for d, s, t in timings), ""]
    db = cfg.registry.tracking_uri
    out += ["Open the results:",
            f"  MLflow UI:  mlflow ui --backend-store-uri {db} --port 5000   → http://127.0.0.1:5000",
            f"  Airflow UI: AIRFLOW_HOME={os.environ['AIRFLOW_HOME']} airflow standalone   → http://127.0.0.1:8080",
            f"  (or `h3ops up` for the local stack; config: {Path(cfg.workdir).parent / 'pipeline.yaml'})"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        argv = argv[1:]
    args = _parser().parse_args(argv)
    # The repository's packages first: the DAG tasks import them in this process, whatever the
    # working directory (an editable install made before a package existed maps it as a namespace).
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    home = Path(args.home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    _environment(home)
    os.environ.setdefault("OMP_NUM_THREADS", str(min(4, os.cpu_count() or 1)))
    t0 = time.perf_counter()

    cfg, cfg_path = _config(args, home)
    conf = {"config": str(cfg_path)}
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.db import initdb

    from h3ops.pipeline import run_step

    with Story(home / "demo.log", args.verbose) as story:
        story.say(f"h3ops demo: project {cfg.project}, base {cfg.base_model}, merge {cfg.merge.method}, "
                  f"suite {cfg.evaluation.suite}" + ("" if args.verbose else f"  (logs: {story.log_path})"))
        initdb()
        bag = DagBag(dag_folder=str(ROOT / "dags"))
        if bag.import_errors:
            story.say(f"h3ops demo: DAG import errors: {bag.import_errors}")
            raise SystemExit(1)
        timings: list = []
        # A demo should fail fast: the DAGs' retry (minutes later, for resumable GPU jobs) is for production.
        for dag in bag.dags.values():
            for task in dag.tasks:
                task.retries = 0
        t = time.perf_counter()
        story.say(f"▸ base model {cfg.base_model} …")
        base = run_step("prepare_base", cfg)
        boot = run_step("bootstrap_production", cfg, {"base": base})
        story.say(f"  first production model {boot['production']} in {time.perf_counter() - t:.0f} s")
        landed = land_preferences(cfg, args.pairs or (16 if args.tiny else 64))
        story.say(f"▸ landed {len(landed)} preference files: " + ", ".join(p.name for p in landed.values()))

        _run(bag, "preference_ingest", conf, timings, story)
        if cfg.continual.enabled:
            _run(bag, "continual_dpo_baseline", conf, timings, story)
        _run(bag, "continual_alignment", conf, timings, story)
        decision = _xcom(bag, "continual_alignment", "gate")
        if decision:
            story.say("  " + decision.get("summary", f"gate passed={decision.get('passed')}").replace("\n", "\n  "))
        promoted = (_xcom(bag, "continual_alignment", "promote") or {}).get("promoted")
        if promoted:
            _run(bag, "promote_to_serving", conf, timings, story)
        if args.score_candidates:  # for the table only: the gate does not need them
            from h3ops.steps.common import registry
            t = time.perf_counter()
            story.say("▸ scoring the single-dimension candidates for the table …")
            for v in registry(cfg).versions(cfg.project, "candidate"):
                run_step("evaluate", cfg, {"model_uri": v.uri})
            story.say(f"  done in {time.perf_counter() - t:.0f} s")
        story.say()
        story.say(summary(cfg, decision, timings))
        from h3ops.steps.common import tracking_uri
        story.say(f"\nServe production (OpenAI-compatible, follows the alias): h3ops serve --project {cfg.project} "
                  f"--tracking-uri {tracking_uri(cfg)} --port 8000")
        story.say(f"h3ops demo: done in {time.perf_counter() - t0:.0f} s")
    return 0


def _xcom(bag, dag_id: str, task_id: str):
    """The return value of `task_id` in the DAG's latest run."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        run = s.execute(select(DagRun).where(DagRun.dag_id == dag_id)
                        .order_by(DagRun.id.desc()).limit(1)).scalars().first()
        if run is None:
            return None
        row = s.execute(XComModel.get_many(run_id=run.run_id, dag_ids=dag_id, task_ids=task_id,
                                           key="return_value")).scalars().first()
        return XComModel.deserialize_value(row) if row is not None else None


if __name__ == "__main__":
    sys.exit(main())
