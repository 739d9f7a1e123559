"""Local stack: time to healthy, memory and process count, SQLite vs PostgreSQL metadata.

    .venv/bin/python bench/infra_bench.py [--db sqlite postgres]

Each run starts the stack from nothing in a temporary home (free ports, PostgreSQL databases
with a unique prefix, dropped afterwards), measures `up` until every health check passes, sums
the RSS of every process in the stack's groups, times a second (no-op) `up` and `down`.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.local import procs, stack  # noqa: E402


def _cli(*args) -> float:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "infra.local.stack", *args], capture_output=True, text=True,
                          timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{args[0]} failed:\n{done.stdout}\n{done.stderr}")
    return time.monotonic() - t0


def run(db: str) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"h3ops-bench-{db}-"))
    prefix = f"h3ops_bench_{uuid.uuid4().hex[:8]}"
    args = ["--home", str(home), "--db", db, "--pg-prefix", prefix,
            "--s3-port", str(procs.free_port()), "--mlflow-port", str(procs.free_port()),
            "--airflow-port", str(procs.free_port())]
    try:
        cold = _cli("up", *args)
        lay = stack.Layout(home)
        members = [p for n in stack.SERVICES for p in procs.group_members(procs.read_record(lay.state, n))]
        rss = {}
        for n in stack.SERVICES:
            rec = procs.read_record(lay.state, n)
            rss[n] = sum(p.memory_info().rss for p in procs.group_members(rec)) / 2**20
        warm = _cli("up", *args)
    finally:
        down = _cli("down", "--home", str(home))
        if db == "postgres":
            import psycopg2

            conn = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres")
            conn.autocommit = True
            with conn.cursor() as cur:
                for name in stack.pg_databases(prefix).values():
                    cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.close()
    return {"db": db, "cold_up_s": cold, "warm_up_s": warm, "down_s": down, "processes": len(members),
            "rss_mib": rss, "rss_total_mib": sum(rss.values())}


def peer_standalone() -> dict:
    """The plain way to get Airflow alone: `airflow standalone` in a fresh home, until healthy."""
    from h3ops import names
    from infra.local.airflow_api import AirflowAPI
    import os

    home = Path(tempfile.mkdtemp(prefix="h3ops-bench-standalone-"))
    port = procs.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(names.AIRFLOW_BASE_ENV, AIRFLOW_HOME=str(home), AIRFLOW__API__PORT=str(port),
               AIRFLOW__API__HOST="127.0.0.1", AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{port}",
               AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    t0 = time.monotonic()
    rec = procs.start("standalone", [str(Path(sys.executable).parent / "airflow"), "standalone"], env,
                      home / "state", home / "logs")
    api = AirflowAPI(f"http://127.0.0.1:{port}")
    try:
        procs.wait_for(lambda: api.health().get("scheduler", {}).get("status") == "healthy", "standalone",
                       600, [rec], every_s=1)
        took = time.monotonic() - t0
        rss = sum(p.memory_info().rss for p in procs.group_members(rec)) / 2**20
    finally:
        procs.stop(rec)
    return {"cold_up_s": took, "rss_total_mib": rss}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", nargs="+", default=["sqlite", "postgres"])
    args = ap.parse_args()
    print(f"load: {open('/proc/loadavg').read().split()[:3]}")
    results = [run(db) for db in args.db]
    peer = peer_standalone()
    print(f"peer: `airflow standalone` alone (no MLflow, no S3, no pool/connections): healthy in "
          f"{peer['cold_up_s']:.1f} s, RSS {peer['rss_total_mib']:.0f} MiB")
    for r in results:
        parts = ", ".join(f"{k} {v:.0f}" for k, v in r["rss_mib"].items())
        print(f"{r['db']:<9} cold up {r['cold_up_s']:.1f} s, warm up {r['warm_up_s']:.1f} s, down {r['down_s']:.1f} s, "
              f"{r['processes']} processes, RSS {r['rss_total_mib']:.0f} MiB ({parts})")
    for r in results:
        print(f"ratio cold up h3ops {r['db']} / standalone: {r['cold_up_s'] / peer['cold_up_s']:.2f}")
    if len(results) == 2:
        print(f"ratio cold up {results[1]['db']}/{results[0]['db']}: {results[1]['cold_up_s'] / results[0]['cold_up_s']:.2f}")
    print(f"load: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
