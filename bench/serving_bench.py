"""Serving benchmark: request latency of `h3ops serve` and the time to switch versions under load.

Starts its own `mlflow server` (SQLite, local artifacts) in a temp folder, registers two versions
of a model (the base and a seeded perturbation of it), makes the first production and starts
`h3ops serve` (transformers engine, CPU, hand-off only). Then:
  ready     : seconds from process start to /health 200 (download, verify, load, warm-up)
  latency   : sequential chat completions, greedy, --max-tokens new tokens each
  switch    : promote version 2 and hand it off while a client sends requests back to back;
              the server's own breakdown (fetch+verify, load+warm-up, swap) and the client's view
  rollback  : roll back and hand off (the previous version is still in the cache: no download)

    OMP_NUM_THREADS=1 .venv/bin/python bench/serving_bench.py --model tiny
    OMP_NUM_THREADS=2 .venv/bin/python bench/serving_bench.py --model smollm2 --requests 5
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def _chat(base: str, name: str, max_tokens: int) -> tuple[float, dict]:
    t = time.perf_counter()
    body = _post(f"{base}/v1/chat/completions", {"model": name, "max_tokens": max_tokens, "temperature": 0,
                                                 "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    return time.perf_counter() - t, body


def _stats(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"n": len(xs), "p50_s": round(statistics.median(xs), 4), "p95_s": round(xs[math.ceil(0.95 * len(xs)) - 1], 4),
            "max_s": round(xs[-1], 4)}


def _wait(cond, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError("condition not met within the deadline")
        time.sleep(0.05)


def _under_load(base: str, name: str, max_tokens: int, action) -> dict:
    """Run `action` while a client sends requests back to back; report the client's view."""
    seen, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            try:
                dt, body = _chat(base, name, max_tokens)
                seen.append((time.perf_counter(), dt, body["system_fingerprint"]))
            except Exception as e:
                seen.append((time.perf_counter(), None, repr(e)))

    th = threading.Thread(target=client, daemon=True)
    th.start()
    _wait(lambda: len(seen) >= 1, 600)  # the client is running before the switch starts
    t0 = time.perf_counter()
    result = action()
    t1 = time.perf_counter()
    new = result["served"]["digest"]
    _wait(lambda: any(d == new for *_, d in seen), 600)  # answers come from the new version
    stop.set()
    th.join(600)
    during = [dt for t, dt, _ in seen if dt is not None and t0 <= t <= t1 + (dt or 0)]
    return {"server": result.get("seconds"), "handoff_wall_s": round(t1 - t0, 3), "requests": len(seen),
            "failed": sum(dt is None for _, dt, _ in seen), "latency_during_switch": _stats(during) if during else None,
            "digests_in_order": list(dict.fromkeys(d for *_, d in seen))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--out", help="write the JSON result here")
    a = ap.parse_args()

    from h3ops.testing import make_candidate, make_tiny_llama
    from registry.api import Registry
    from serving.handoff import reload
    from tests.fixtures.servers import free_port, http_ok, process_group, run_mlflow_server, wait_until

    root = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    if a.model == "tiny":
        base = make_tiny_llama(root / "v1")
    else:
        from h3ops.smollm2 import ensure_smollm2
        base = ensure_smollm2()
    cand = make_candidate(base, root / "v2", seed=1, scale=0.002)
    size_mb = sum(f.stat().st_size for f in Path(base).rglob("*") if f.is_file()) / 2**20
    out: dict = {"model": a.model, "checkpoint_mb": round(size_mb, 1), "max_tokens": a.max_tokens,
                 "omp_threads": os.environ.get("OMP_NUM_THREADS"), "load_avg_start": os.getloadavg()[0]}
    with run_mlflow_server(root, f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts")) as srv:
        reg = Registry(srv.url)
        project = f"bench{int(time.time())}"
        from h3ops.digest import digest_dir
        v1 = reg.register_checkpoint(base, project=project, kind="merged", method="base", base_digest=digest_dir(base))
        v2 = reg.register_checkpoint(cand, project=project, kind="merged", method="linear")

        def promote(uri: str):
            reg.promote(project, uri, None, force=True, reason="serving bench: ops promotion", by="bench")

        promote(v1.uri)
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "h3ops.cli", "serve", "--project", project, "--tracking-uri", srv.url,
               "--port", str(port), "--poll-interval", "0", "--cache-dir", str(root / "cache"), "--log-level", "warning"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        t = time.perf_counter()
        with process_group(cmd, root / "serve.log", env) as proc:
            wait_until(lambda: http_ok(f"{base_url}/health"), "h3ops serve", 900, proc, root / "serve.log")
            out["ready_s"] = round(time.perf_counter() - t, 2)
            name = v1.name
            _chat(base_url, name, a.max_tokens)  # first request pays lazy initialisation
            lat, toks = [], []
            for _ in range(a.requests):
                dt, body = _chat(base_url, name, a.max_tokens)
                lat.append(dt)
                toks.append(body["usage"]["completion_tokens"])
            out["latency"] = {**_stats(lat), "completion_tokens_mean": statistics.mean(toks),
                              "tokens_per_s": round(sum(toks) / sum(lat), 1)}
            promote(v2.uri)
            out["switch"] = _under_load(base_url, name, a.max_tokens,
                                        lambda: reload(base_url, version=v2.version, digest=v2.tags["h3ops.content_digest"]))
            reg.rollback(project)
            out["rollback"] = _under_load(base_url, name, a.max_tokens,
                                          lambda: reload(base_url, version=v1.version, digest=v1.tags["h3ops.content_digest"]))
    out["load_avg_end"] = os.getloadavg()[0]
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
