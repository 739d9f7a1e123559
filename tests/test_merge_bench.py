"""Keep the merge benchmark runnable: its --tiny mode, ours against the I/O floor (no mergekit)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_merge_bench_tiny(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "merge_bench.py"), "--tiny", "--no-mergekit",
                        "--methods", "ties", "--work", str(tmp_path / "w"), "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert {(r["tool"], r["method"]) for r in rows} == {("h3ops", "ties"), ("io-floor", "-")}
    assert all(r["wall_s"] > 0 and r["rss_mb"] > 0 for r in rows)
    assert "| h3ops | ties |" in p.stdout
