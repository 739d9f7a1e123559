"""How far apart the merge benchmark's entries are: every entry of h3ops/merge_benchmark.yaml on a
tiny Llama (base + 3 seeded candidates), then the closest pairs by max |difference| of weights;
the same with empty parameters (what the benchmark DAG passed before the plan existed).

Usage: PYTHONPATH=. OMP_NUM_THREADS=1 python bench/merge_plan_pairs.py
"""
from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from h3ops.config import validate_config
from h3ops.steps.benchmark import benchmark_merge
from h3ops.steps.benchmark_plan import load_plan
from h3ops.testing import make_candidate, make_tiny_llama

DIMS = ["helpfulness", "honesty", "harmlessness"]


def weights(folder: str) -> dict:
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def main() -> None:
    t = Path(tempfile.mkdtemp())
    base = make_tiny_llama(t / "base")
    cands = [{"uri": str(make_candidate(base, t / d, seed=i + 1, dimension=d)), "dimension": d}
             for i, d in enumerate(DIMS)]
    cfg = validate_config({"project": "pairs", "base_model": "tiny", "workdir": str(t / "w"),
                           "dimensions": [{"name": d, "landing": str(t / d)} for d in DIMS]})
    report = {}
    for mode in ("plan", "empty_parameters"):
        entries = load_plan().expanded()
        if mode != "plan":
            entries = [{**e, "parameters": {}, "weights_by_dimension": {}} for e in entries]
        merged = {e["label"]: weights(benchmark_merge(cfg, e, str(base), cands)["path"]) for e in entries}
        pairs = sorted((max((merged[a][k].float() - merged[b][k].float()).abs().max().item() for k in merged[a]), a, b)
                       for a, b in itertools.combinations(merged, 2))
        report[mode] = {"identical": [[a, b] for d, a, b in pairs if d == 0.0],
                        "closest": [[a, b, float(f"{d:.3g}")] for d, a, b in pairs[:5]]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
