"""`h3ops compare`: what the gate compares, side by side, across kinds of model.

Rows are the registered versions of the kinds asked for (merged, continual stages, candidates,
mixtures, base) plus whatever holds `production`, each with its 3H scores measured on its own
content. The link opens MLflow's run comparison of exactly those evaluation runs; the plot shows
each model's helpful/honest/harmless averages and its overall average (the trade-off the paper's
Table 3 reads).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from registry.checkpoints import KINDS, TAG

SCORE_KEYS = ("helpful_avg", "honest_avg", "harmless_avg", "avg")


def rows(reg, project: str, kinds: list[str], only: list[str] | None = None, *,
         include_production: bool = True) -> list[dict[str, Any]]:
    """One row per version of `kinds` (only: version numbers or models:/ URIs to keep)."""
    prod, prev = reg.production(project), reg.previous_production(project)
    refs = [r for kind in kinds for r in _versions(reg, project, kind)]
    if include_production and prod is not None and prod.uri not in {r.uri for r in refs}:
        refs.append(prod)  # production is always what a candidate must beat
    out = []
    for r in refs:
        if only and r.version not in only and r.uri not in only:
            continue
        run = reg.evaluation_run(r)
        scores = json.loads(run.data.tags[f"{TAG}scores"]) if run else None
        aliases = [n for n, a in (("production", prod), ("previous-production", prev)) if a and a.uri == r.uri]
        parents = json.loads(r.tags.get(f"{TAG}parents", "[]") or "[]")
        out.append({"version": r.version, "uri": r.uri, "kind": r.tags.get(f"{TAG}kind", ""),
                    "dimension": r.tags.get(f"{TAG}dimension", ""), "method": r.tags.get(f"{TAG}method", ""),
                    "parents": [p.get("uri") or p.get("digest", "")[:19] for p in parents], "aliases": aliases,
                    "suite": scores.get("suite") if scores else None, "eval_run_id": run.info.run_id if run else None,
                    "experiment_id": run.info.experiment_id if run else None,
                    **{k: (round(float(scores[k]), 2) if scores and k in scores else None) for k in SCORE_KEYS}})
    return out


def _versions(reg, project: str, kind: str):
    if kind not in KINDS:
        return []
    return reg.versions(project, kind)


def runs_url(reg, table: list[dict[str, Any]]) -> str | None:
    """MLflow's run comparison page for exactly these rows' evaluation runs (None: fewer than two)."""
    runs = [r["eval_run_id"] for r in table if r["eval_run_id"]]
    if len(runs) < 2:
        return None
    exps = sorted({r["experiment_id"] for r in table if r["experiment_id"]})
    return (f"{reg.ui_url()}/#/compare-runs?runs={quote(json.dumps(runs, separators=(',', ':')))}"
            f"&experiments={quote(json.dumps(exps, separators=(',', ':')))}")


def plot(table: list[dict[str, Any]], path: str | Path, title: str = "3H trade-off") -> Path:
    """Grouped bars of the three dimension averages per model, the overall average as a marker."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window, never a display
    import matplotlib.pyplot as plt

    scored = [r for r in table if r["avg"] is not None]
    if not scored:
        raise ValueError("no scored versions to plot")
    labels = [f"{r['kind']} v{r['version']}" + (f"\n{r['dimension'] or r['method']}" if (r['dimension'] or r['method'])
                                                  else "") + ("\n(production)" if "production" in r["aliases"] else "")
              for r in scored]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(scored)), 4.5))
    width = 0.26
    for i, (key, name) in enumerate((("helpful_avg", "helpful"), ("honest_avg", "honest"),
                                     ("harmless_avg", "harmless"))):
        ax.bar([x + (i - 1) * width for x in range(len(scored))], [r[key] for r in scored], width, label=name)
    ax.plot(range(len(scored)), [r["avg"] for r in scored], "k_", markersize=22, mew=2.5, label="3H avg")
    ax.set_xticks(range(len(scored)), labels, fontsize=8)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def log(reg, project: str, table: list[dict[str, Any]]) -> str:
    """Record the comparison (table and plot) as a run of the project's evaluations experiment."""
    exp = reg.experiment_id(f"h3ops/{project}/evaluations")
    run = reg.client.create_run(exp, tags={"mlflow.runName": f"compare-{project}", f"{TAG}kind": "comparison",
                                           f"{TAG}compared": json.dumps([r["uri"] for r in table])})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "comparison.json").write_text(json.dumps(table, indent=2))
        if any(r["avg"] is not None for r in table):
            plot(table, Path(tmp) / "3h_tradeoff.png", title=f"{project}: 3H trade-off")
        reg.client.log_artifacts(run.info.run_id, tmp)
    reg.client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
