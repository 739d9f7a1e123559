"""Fast checks of the local stack's process handling and its refusals (no servers started)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from h3ops import names
from infra.local import procs, stack

PY = sys.executable


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _run(*args, timeout=120):
    return subprocess.run([PY, "-m", "infra.local.stack", *args], capture_output=True, text=True, timeout=timeout)


def test_port_in_use_is_a_clear_error_and_starts_nothing(tmp_path):
    s3, mlflow, airflow = _free_ports(3)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", mlflow))
        busy.listen(1)
        done = _run("up", "--home", str(tmp_path), "--s3-port", str(s3), "--mlflow-port", str(mlflow),
                    "--airflow-port", str(airflow), "--timeout", "30")
    assert done.returncode == 1
    assert f"port {mlflow} for MLflow is already in use" in done.stderr
    assert "--mlflow-port" in done.stderr
    assert "Traceback" not in done.stderr
    # Nothing was started: no pid records, so a later `down` has nothing to do.
    assert not list((tmp_path / "stack").glob("*.pid.json"))
    down = _run("down", "--home", str(tmp_path))
    assert down.returncode == 0 and "nothing running" in down.stdout


def test_bad_db_choice_is_rejected(tmp_path):
    done = _run("up", "--home", str(tmp_path), "--db", "mysql")
    assert done.returncode == 2 and "--db" in done.stderr and "mysql" in done.stderr


def test_h3ops_cli_dispatches_up_and_down(tmp_path):
    done = subprocess.run([PY, "-m", "h3ops.cli", "down", "--home", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "nothing running" in done.stdout


def test_unreachable_postgres_is_named(tmp_path):
    (port,) = _free_ports(1)
    with pytest.raises(procs.StackError, match="PostgreSQL at .* is not reachable"):
        stack.ensure_database(f"postgresql://postgres@127.0.0.1:{port}", "h3ops_never")


def test_ensure_database_creates_once():
    import psycopg2

    url = "postgresql://postgres@127.0.0.1:5432"
    db = f"h3ops_test_{uuid.uuid4().hex[:10]}"
    try:
        assert stack.ensure_database(url, db) is True
        assert stack.ensure_database(url, db) is False
    finally:
        conn = psycopg2.connect(f"{url}/postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}"')
        conn.close()


def test_stop_kills_the_whole_group_and_escaped_children(tmp_path):
    # A leader with a grandchild in its group and one that left the group with setsid.
    script = ("import subprocess, os, sys, time\n"
              "a = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
              "b = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
              f"open({str(tmp_path / 'kids')!r}, 'w').write(f'{{a.pid}} {{b.pid}}')\n"
              "time.sleep(600)\n")
    rec = procs.start("sleeper", [PY, "-c", script], {}, tmp_path / "state", tmp_path / "logs")
    procs.wait_for(lambda: (tmp_path / "kids").exists(), "children", 60, [rec], every_s=0.1)
    kids = [int(p) for p in (tmp_path / "kids").read_text().split()]
    assert rec.alive() and all(psutil.pid_exists(k) for k in kids)
    assert procs.read_record(tmp_path / "state", "sleeper") == rec
    counts = procs.stop(rec, grace_s=5)
    assert counts == {"sleeper": 3}
    time.sleep(0.2)
    for pid in [rec.pid, *kids]:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not rec.alive()


def test_a_reused_pid_is_not_ours(tmp_path):
    # A record whose pid now belongs to another process (here: a fresh group leader) is left alone.
    other = subprocess.Popen([PY, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        rec = procs.ProcRecord("x", other.pid, 12345.0, ["x"], "log")
        assert not rec.alive()
        assert procs.group_members(rec) == []
        assert procs.stop(rec) == {"x": 0}
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_running_stack_refuses_other_db(tmp_path, monkeypatch):
    lay = stack.Layout(tmp_path)
    lay.state.mkdir(parents=True)
    lay.state_file.write_text(json.dumps({"db": "sqlite", "ports": names.DEFAULT_PORTS}))
    rec = procs.start("s3", [PY, "-c", "import time; time.sleep(600)"], {}, lay.state, lay.logs)
    try:
        with pytest.raises(procs.StackError, match="running with --db sqlite"):
            stack.up(lay, dict(names.DEFAULT_PORTS), "postgres", "postgresql://x", 1, 10)
    finally:
        procs.stop(rec, grace_s=5)


def test_bad_postgres_prefix_is_refused_before_anything_starts(tmp_path):
    s3, mlflow, airflow = _free_ports(3)
    done = _run("up", "--home", str(tmp_path), "--db", "postgres", "--pg-prefix", "x; DROP", "--s3-port", str(s3),
                "--mlflow-port", str(mlflow), "--airflow-port", str(airflow))
    assert done.returncode == 1 and "--pg-prefix 'x; DROP'" in done.stderr
    assert not list((tmp_path / "stack").glob("*.pid.json"))


def test_missing_dags_folder_is_refused(tmp_path):
    s3, mlflow, airflow = _free_ports(3)
    done = _run("up", "--home", str(tmp_path / "h"), "--dags-folder", str(tmp_path / "nope"), "--s3-port", str(s3),
                "--mlflow-port", str(mlflow), "--airflow-port", str(airflow))
    assert done.returncode == 1 and "is not a folder" in done.stderr and "nope" in done.stderr
    assert not (tmp_path / "h" / "stack").exists()
