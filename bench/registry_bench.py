"""Registry benchmark: h3ops registration vs plain MLflow logging of the same checkpoint folder.

Starts its own `mlflow server` (SQLite, local artifacts) in a temp folder, builds a tiny Llama of a
chosen size and times, on the same server in the same run:
  peer   : create_run + log_artifacts + create_model_version (what a bare MLflow script does)
  h3ops  : Registry.register_checkpoint (validation, digests, idempotency lookup, lineage tags)
  rerun  : register_checkpoint again with the same inputs (returns the existing version)
  check  : the parts of registration that read every byte, alone: the plain-data check with the
           NaN/Inf scan (h3ops.safe_checkpoint) and the content digest (sha256)
  score  : aggregate + decide on a Table 5 row (pure Python)

    OMP_NUM_THREADS=1 .venv/bin/python bench/registry_bench.py --hidden 512 --layers 4 --repeat 3
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()

    from h3ops.testing import make_candidate, make_tiny_llama
    from registry.api import Registry
    from tests.fixtures.servers import run_mlflow_server

    root = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    base = make_tiny_llama(root / "base", hidden=a.hidden, layers=a.layers)
    ck = make_candidate(base, root / "cand", seed=1)
    size = sum(f.stat().st_size for f in ck.rglob("*") if f.is_file())
    with run_mlflow_server(root, f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts")) as srv:
        reg = Registry(srv.url)
        c = reg.client
        peer, ours, rerun = [], [], []
        for i in range(a.repeat):
            t = time.perf_counter()
            exp = reg.experiment_id("bench-peer")
            run = c.create_run(exp)
            c.log_artifacts(run.info.run_id, str(ck), "checkpoint")
            c.set_terminated(run.info.run_id)
            try:
                c.create_registered_model("bench-peer")
            except Exception:
                pass
            c.create_model_version("bench-peer", f"{run.info.artifact_uri}/checkpoint", run_id=run.info.run_id)
            peer.append(time.perf_counter() - t)
            t = time.perf_counter()
            ref = reg.register_checkpoint(ck, project="bench", kind="candidate", config_digest=f"sha256:{i}")
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            assert reg.register_checkpoint(ck, project="bench", kind="candidate", config_digest=f"sha256:{i}") == ref
            rerun.append(time.perf_counter() - t)

    from evaluation.gate import decide
    from evaluation.scoring import aggregate
    from tests.test_scoring_gate import row

    t = time.perf_counter()
    for _ in range(1000):
        decide(row("5", "TSVM"), row("5", "Llama3-8B-Instruct"),
               [row("5", f"Continual DPO Training Stage{i}") for i in (1, 2, 3)])
    gate_ms = (time.perf_counter() - t)  # per 1000 → ms each
    aggregate(row("5", "TSVM"))

    from h3ops.digest import digest_dir
    from h3ops.safe_checkpoint import check_checkpoint_folder

    scan, sha = [], []
    for _ in range(a.repeat):
        t = time.perf_counter()
        check_checkpoint_folder(ck, exact=True, finite=True)
        scan.append(time.perf_counter() - t)
        t = time.perf_counter()
        digest_dir(ck)
        sha.append(time.perf_counter() - t)

    med = statistics.median
    print(f"checkpoint {size / 1e6:.1f} MB, {a.repeat} repeats (median s)")
    print(f"peer  (plain MLflow)          {med(peer):.2f}")
    print(f"h3ops register_checkpoint     {med(ours):.2f}   ratio {med(ours) / med(peer):.2f}x")
    print(f"h3ops re-register (idempotent) {med(rerun):.2f}")
    print(f"gate decide (5 score tables)  {gate_ms:.3f} ms")
    print(f"safe-data check + NaN/Inf scan {med(scan):.3f}   ({size / 1e6 / med(scan):.0f} MB/s)")
    print(f"content digest (sha256)       {med(sha):.3f}   ({size / 1e6 / med(sha):.0f} MB/s)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (this process)")


if __name__ == "__main__":
    main()
