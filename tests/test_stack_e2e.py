"""The real multi-process stack end to end: the project's DAGs on Airflow with the CeleryExecutor.

PostgreSQL holds Airflow's metadata and MLflow's store; Redis is the Celery broker; ONE Celery
worker serves the `default` and `gpu` queues; `mlflow server` proxies artifacts to `rclone serve
s3`; Airflow's api-server, scheduler and dag-processor run with this repository's dags/ and
plugins/. Nothing is called in-process: the test lands preference files, drives Airflow through
its REST API and reads the outcome through MLflow's REST API.

  20 files, with poison files and a symlink among them, land at once → preference_ingest (its
  scheduled run, started by unpausing it over REST) takes them all, each exactly once (the poison
  quarantined, the link refused) → one `h3ops.preferences` event listing every dimension →
  continual_alignment triggered over REST → DPO on the `gpu` queue per dimension → candidates,
  merge, evaluation, gate, promote → registry checked over REST.

Fault: while a DPO task is mid-training (it has saved a checkpoint, its output folder does not
exist yet) the whole Celery worker process group gets SIGKILL, like a lost host. A new worker
starts; the scheduler notices the dead task by its missing heartbeat (15 s here, not 300 s), the
task is retried (H3OPS_RETRY_DELAY_S shortens the DAGs' two-minute retry delay) on the new worker,
and the run still ends with exactly one candidate version per dimension and one merged version.

Every wait is a condition polled against a generous deadline, never a fixed sleep. Every process
runs in its own session and its process group is stopped in `finally`; the database and the Redis
keys are removed there too.
"""
from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from h3ops import names
from infra.local import procs
from plugins.assets import PREFERENCES
from tests.fixtures.celery_stack import ProjectStack, project_stack
from tests.pipeline_helpers import DIMS, tiny_config, write_pairs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

INGEST, LOOP = "preference_ingest", "continual_alignment"
TERMINAL = {"success", "failed"}
LANDED_FILES = 20


def _task_states(st: ProjectStack, dag_id: str, run_id: str) -> dict[str, str]:
    tis = st.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    return {(t["task_id"] if t["map_index"] < 0 else f"{t['task_id']}[{t['map_index']}]"): t["state"]
            for t in tis}


def _xcom(st: ProjectStack, dag_id: str, run_id: str, task_id: str):
    body = st.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
                     "/xcomEntries/return_value?deserialize=true")
    value = body["value"]
    return json.loads(value) if isinstance(value, str) else value


def _finished(st: ProjectStack, dag_id: str, run_id: str) -> dict | None:
    run = st.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
    return run if run["state"] in TERMINAL else None


def _training_in_progress(work: Path) -> list[str]:
    """Candidate folders whose DPO saved a checkpoint but has not finished (no final folder yet)."""
    busy = []
    for state in work.glob("candidates/.*.work-*/checkpoint-*/trainer_state.json"):
        run_dir = state.parent.parent  # .<dimension>-<key>.work-<run key>
        final = run_dir.parent / run_dir.name[1:].split(".work-")[0]
        if not final.exists():
            busy.append(final.name)
    return sorted(set(busy))


def _log_tails(logs: Path, n: int = 2500) -> str:
    parts = []
    for log in sorted(logs.rglob("*.log")):
        text = log.read_text(errors="replace")
        if "Traceback" in text or "ERROR" in text:
            parts.append(f"--- {log}\n{text[-n:]}")
    return "\n".join(parts[-6:])


def test_project_dags_on_celery_postgres_mlflow_s3(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    from h3ops.config import load_config
    from h3ops.steps.ingest import new_files
    from registry.api import model_name

    # 40 DPO steps, a checkpoint every 2 (the test preset): a window of seconds to kill a worker
    # mid-training, and something for the retry to resume from.
    cfg_path = tiny_config(tmp_path, tracking_uri=mlflow_server.url, dpo={"overrides": {"max_steps": 40}})
    cfg = load_config(cfg_path)
    # A burst: 20 files (4 distinct pairs each) land across the three dimensions at once.
    landed: dict[str, int] = {d: 0 for d in DIMS}
    for i in range(LANDED_FILES):
        d = DIMS[i % len(DIMS)]
        write_pairs(tmp_path / "landing" / d, d, name=f"batch{i:02d}.jsonl", salt=f" (#{i})")
        landed[d] += 1
    # Poison in the same burst (issue 14): each is quarantined or refused on its own; the rest proceed.
    poison = {"helpfulness": {"deep.jsonl": b"[" * 100_000 + b"]" * 100_000 + b"\n"},
              "honesty": {"surrogate.jsonl": b'{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}\n',
                          "utf16.jsonl": json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}).encode("utf-16")},
              "harmlessness": {}}
    for d, bodies in poison.items():
        for name, body in bodies.items():
            (tmp_path / "landing" / d / name).write_bytes(body)
    (tmp_path / "landing" / "harmlessness" / "passwd.jsonl").symlink_to("/etc/passwd")
    extra = {d: len(poison[d]) + (d == "harmlessness") for d in DIMS}

    with project_stack(tmp_path, "stack_e2e", cfg_path, mlflow_server.url, (INGEST, LOOP),
                       AIRFLOW__CELERY__WORKER_CONCURRENCY="2",
                       # A killed task is retried seconds later, not after the DAGs' two-minute retry delay.
                       H3OPS_RETRY_DELAY_S="2") as st:
        api, logs = st.api, tmp_path / "logs"
        first_worker = st.worker("worker-1")

        # 1. Unpausing preference_ingest starts its scheduled run (catchup off: one run, now).
        st.set_paused(INGEST, False)
        ingest_run = st.wait_for(lambda: st.runs(INGEST), "preference_ingest run created", 120)[0]["dag_run_id"]
        run = st.wait_for(lambda: _finished(st, INGEST, ingest_run), "preference_ingest finished", 300,
                          every_s=2)
        states = _task_states(st, INGEST, ingest_run)
        assert run["state"] == "success", (states, _log_tails(logs))
        assert {f"validate[{i}]" for i in range(3)} <= set(states), states
        # Pause it again: a second scheduled run would only sit in a worker slot waiting for files.
        st.set_paused(INGEST, True)
        events = st.get(f"/api/v2/assets/events?source_dag_id={INGEST}&limit=50")["asset_events"]
        events = [e for e in events if e.get("source_run_id") == ingest_run]
        # One lineage event per dimension and the run's one scheduling event listing them all.
        (combined,) = [e for e in events if e["uri"] == PREFERENCES.uri]
        events = [e for e in events if e is not combined]
        assert sorted(e["uri"] for e in events) == sorted(f"h3ops://preferences/{d}" for d in DIMS), events
        digests = {e["extra"]["dimension"]: e["extra"]["digest"] for e in events}
        assert {d: v["digest"] for d, v in combined["extra"]["dimensions"].items()} == digests
        # One run took the whole burst, every file exactly once: all rows are in, none is left new.
        for e in events:
            d = e["extra"]["dimension"]
            built = json.loads((Path(e["extra"]["uri"]) / "dataset.json").read_text())
            assert sorted(built["sources"]) == sorted(str(p) for p in (tmp_path / "landing" / d).glob("*.jsonl"))
            assert len(built["sources"]) == landed[d] + extra[d] and built["rows"] == e["extra"]["rows"]
            assert built["rows"] + built["eval_rows"] == 4 * landed[d], built  # train + held-out eval
            assert len(built["quarantined"]) + len(built["refused"]) == extra[d], built
        assert all(new_files(cfg, d) == [] for d in DIMS)
        assert [r["dag_run_id"] for r in st.runs(INGEST)] == [ingest_run]
        assert all(v.startswith("sha256:") for v in digests.values())

        # 2. continual_alignment, triggered over REST with the run's config as conf.
        st.set_paused(LOOP, False)
        status, body = api.request("POST", f"/api/v2/dags/{LOOP}/dagRuns",
                                   {"logical_date": None, "conf": {"config": str(cfg_path)}})
        assert status in (200, 201), body
        loop_run = body["dag_run_id"]

        # 3. SIGKILL the worker's whole process group while a DPO task is mid-training.
        busy = st.wait_for(lambda: _training_in_progress(tmp_path / "work"), "a DPO task mid-training",
                           300, every_s=0.2)
        doomed = procs.group_members(first_worker)
        for proc in doomed:
            proc.kill()
        assert not psutil.wait_procs(doomed, timeout=60)[1]
        procs.stop(first_worker)  # reaps the leader
        # Killed before it could finish: its output folder never appeared.
        assert not [b for b in busy if (tmp_path / "work" / "candidates" / b).exists()], busy
        st.watched.remove(first_worker)
        st.worker("worker-2")
        run = st.wait_for(lambda: _finished(st, LOOP, loop_run), "continual_alignment finished", 420,
                          every_s=2)
        states = _task_states(st, LOOP, loop_run)
        assert run["state"] == "success", (states, _log_tails(logs))
        assert set(states.values()) == {"success"}, states
        assert {f"train[{i}]" for i in range(3)} <= set(states)
        tries = dict(st.sql("SELECT map_index, try_number FROM task_instance WHERE run_id = %s "
                              "AND task_id = 'train'", (loop_run,)))
        assert max(tries.values()) >= 2, tries  # the killed DPO task was retried, then succeeded
        for name in busy:  # and its retry resumed from the checkpoint the killed try had saved
            manifest = json.loads((tmp_path / "work" / "candidates" / name / "h3ops.json").read_text())
            assert manifest["parameters"]["resumed_from_step"] > 0, (name, manifest["parameters"])
        # The DPO and merge tasks ran on the gpu queue (the worker serves both queues).
        gpu_tasks = st.sql("SELECT DISTINCT task_id FROM task_instance WHERE run_id = %s AND queue = %s",
                           (loop_run, names.GPU_QUEUE))
        assert {"train", "merge", "evaluate"} <= {t for (t,) in gpu_tasks}

        # 4. The registry, read through MLflow's REST API.
        client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
        cands = client.search_model_versions(f"name = '{model_name(cfg.project, 'candidate')}'")
        assert sorted(v.tags["h3ops.dimension"] for v in cands) == sorted(DIMS)
        for v in cands:
            assert v.tags["h3ops.kind"] == "candidate"
            assert v.tags["h3ops.data_digest"] == digests[v.tags["h3ops.dimension"]]
        merged_name = model_name(cfg.project, "merged")
        (merged,) = client.search_model_versions(f"name = '{merged_name}'")
        assert merged.tags["h3ops.method"] == cfg.merge.method
        cand_uris = sorted(f"models:/{v.name}/{v.version}" for v in cands)
        assert sorted(p["uri"] for p in json.loads(merged.tags["h3ops.parents"])) == cand_uris
        assert merged.tags["h3ops.base_digest"] == cands[0].tags["h3ops.base_digest"]

        merged_uri = f"models:/{merged_name}/{merged.version}"
        decision = _xcom(st, LOOP, loop_run, "gate")
        assert decision["candidate"] == merged_uri and isinstance(decision["passed"], bool), decision
        promoted = _xcom(st, LOOP, loop_run, "promote")
        assert promoted["promoted"] is decision["passed"], (decision, promoted)
        aliases = client.get_registered_model(merged_name).aliases
        if decision["passed"]:
            assert str(aliases.get("production")) == str(merged.version), aliases
        else:
            assert "production" not in aliases, aliases
