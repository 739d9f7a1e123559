"""Merge benchmark: every method on the current candidates, a leaderboard like the paper's Table 3
and a 3H trade-off plot, logged to MLflow as artifacts of one benchmark run.

Each method runs with the settings of the versioned benchmark file (h3ops/merge_benchmark.yaml
by default; see h3ops.steps.benchmark_plan), never with empty parameters: with mergekit's
defaults several methods collapse into one another (dare_linear = task_arithmetic, ...).
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

from h3ops.config import PipelineConfig
from h3ops.steps import step
from h3ops.steps.benchmark_plan import load_plan
from h3ops.steps.common import registry, workdir


def _latest(cfg: PipelineConfig) -> dict[str, str]:
    latest = {}
    for v in registry(cfg).versions(cfg.project, "candidate"):  # ascending versions
        latest[v.tags.get("h3ops.dimension")] = v.uri
    return latest


@step("latest_candidates")
def latest_candidates(cfg: PipelineConfig) -> list[str]:
    """The newest registered candidate of each configured dimension."""
    latest = _latest(cfg)
    return [latest[d.name] for d in cfg.dimensions if d.name in latest]


@step("benchmark_candidates")
def benchmark_candidates(cfg: PipelineConfig) -> list[dict]:
    """Like latest_candidates, with each candidate's dimension (per-dimension weights need it)."""
    latest = _latest(cfg)
    return [{"uri": latest[d.name], "dimension": d.name} for d in cfg.dimensions if d.name in latest]


@step("merge_methods")
def merge_methods(cfg: PipelineConfig, methods: list[str] | None = None, benchmark: str | None = None,
                  sweep: bool = False) -> list[dict]:
    """The benchmark's entries ({label, method, parameters, weights_by_dimension, version}),
    restricted to `methods` (labels or method names); with `sweep`, one entry per swept value."""
    return load_plan(benchmark).entries_for(methods, sweep=sweep)


@step("benchmark_merge")
def benchmark_merge(cfg: PipelineConfig, entry: dict, base: str, candidates: list[dict]) -> dict:
    """Merge the candidates with one benchmark entry's settings (per-dimension weights applied)."""
    from h3ops.steps.merge import merge_candidates

    weights = entry.get("weights_by_dimension") or {}
    model_params = [{"weight": float(weights.get(c["dimension"], 1.0))} for c in candidates] if weights else None
    merged = merge_candidates(cfg, base, [c["uri"] for c in candidates], method=entry["method"],
                              parameters=entry["parameters"], model_parameters=model_params)
    return {**merged, "label": entry["label"], "benchmark_version": entry["version"]}


def _table(rows: list[dict]) -> str:
    head = "| model | method | helpful | honest | harmless | avg |\n|---|---|---|---|---|---|\n"
    return head + "".join(
        f"| {r['model_uri']} | {r['label']} | {r['helpful_avg']:.2f} | {r['honest_avg']:.2f} | "
        f"{r['harmless_avg']:.2f} | {r['avg']:.2f} |\n" for r in rows)


def _plot(rows: list[dict], path) -> None:
    import matplotlib
    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for r in rows:
        marker = {"production": "*", "continual": "s", "mixture": "^"}.get(r["role"], "o")
        ax.scatter(r["helpful_avg"], r["harmless_avg"], c=[[r["honest_avg"] / 100, 0.3, 0.6]], marker=marker, s=80)
        ax.annotate(r["label"], (r["helpful_avg"], r["harmless_avg"]), fontsize=7)
    ax.set_xlabel("helpfulness avg")
    ax.set_ylabel("harmlessness avg")
    ax.set_title("3H trade-off (colour: honesty)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def best_per_baseline(rows: list[dict]) -> list[dict]:
    """Of each mixture baseline's swept runs (label@name=value) keep the best average (the paper's
    "best kept"); every other row is kept as is."""
    best: dict[str, dict] = {}
    out = []
    for r in rows:
        if r["role"] != "mixture":
            out.append(r)
            continue
        name = r["label"].split("@")[0]
        if name not in best or r["avg"] > best[name]["avg"]:
            best[name] = r
    return out + list(best.values())


@step("leaderboard")
def leaderboard(cfg: PipelineConfig, merged: list[dict], mixtures: list[dict] | None = None) -> dict:
    """Rank the merged versions and the mixture baselines with production and continual marked;
    log table and plot to MLflow."""
    from h3ops.steps.gate import continual_latest, production_uri
    reg = registry(cfg)
    entries = [(m["uri"], m.get("label") or m.get("method", "?"), "merged") for m in merged]
    entries += [(m["uri"], m.get("label", "mixture"), "mixture") for m in mixtures or []]
    if (prod := production_uri(cfg)):
        entries.append((prod, "production", "production"))
    entries += [(u, f"continual stage {i + 1}", "continual") for i, u in enumerate(continual_latest(cfg))]
    rows = []
    for uri, label, role in entries:
        s = reg.get_scores(uri)
        if s is not None:
            rows.append({"model_uri": uri, "label": label, "role": role, **s.averages()})
    rows = best_per_baseline(rows)
    rows.sort(key=lambda r: -r["avg"])
    out = workdir(cfg, "benchmark", datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S"))
    (out / "leaderboard.md").write_text(_table(rows))
    (out / "leaderboard.json").write_text(json.dumps(rows, indent=2))
    _plot(rows, out / "tradeoff.png")
    exp = reg.experiment_id(f"h3ops/{cfg.project}/merge-benchmark")
    run = reg.client.create_run(exp, tags={"mlflow.runName": "merge-benchmark"})
    reg.client.log_artifacts(run.info.run_id, str(out))
    reg.client.set_terminated(run.info.run_id, "FINISHED")
    return {"run_id": run.info.run_id, "folder": str(out), "rows": rows}
