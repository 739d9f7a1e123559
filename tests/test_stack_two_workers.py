"""The loop runs by itself across workers that share no disk (issue 15).

PostgreSQL, Redis, `mlflow server` with artifacts in `rclone serve s3`, Airflow's api-server,
scheduler, dag-processor and triggerer, and TWO Celery workers, each started in its own folder
with the pipeline's `workdir` relative (so each has its own working directory; nothing is read
from the other's). Preference files are uploaded to the S3 landing prefix; the three DAGs are only
unpaused: the scheduled preference_ingest picks the files up, its one `h3ops.preferences` event
starts continual_dpo_baseline, whose asset event starts continual_alignment — no run is triggered
by hand. Datasets, the base model and every checkpoint travel by URI and digest (the store, the
registry). One ingest run starts one baseline run, however the workers interleave the ingest's
mapped validations (their per-dimension events start nothing), so the registry ends with one
candidate per dimension, one merged version and one continual stage per dimension.
"""
from __future__ import annotations

import pytest

from h3ops import names
from tests.fixtures.celery_stack import project_stack
from tests.pipeline_helpers import DIMS, tiny_config, write_pairs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DAGS = ("preference_ingest", "continual_dpo_baseline", "continual_alignment")


def test_data_triggers_the_loop_across_two_workers_without_shared_disk(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    from h3ops.config import load_config
    from registry.api import model_name

    s3 = mlflow_server.s3
    bucket = f"s3://{s3.bucket}/{tmp_path.name}"
    cfg_path = tiny_config(tmp_path, tracking_uri=mlflow_server.url, store=f"{bucket}/store",
                           dimensions=[{"name": d, "landing": f"{bucket}/landing/{d}"} for d in DIMS],
                           workdir="work")  # relative: each worker's own folder
    cfg = load_config(cfg_path)
    with project_stack(tmp_path, "two_workers", cfg_path, mlflow_server.url, DAGS, triggerer=True,
                       **s3.env()) as st:
        st.api.set_connection(names.S3_CONN_ID, "aws", login=s3.access_key, password=s3.secret_key,
                              extra={"endpoint_url": s3.endpoint, "region_name": "us-east-1"})
        hosts = [tmp_path / "host-a", tmp_path / "host-b"]
        for i, host in enumerate(hosts):
            st.worker(f"worker{i}", cwd=host)

        # A user lands files in the bucket, and the DAGs are switched on. Nothing else.
        client = s3.client()
        for d in DIMS:
            f = write_pairs(tmp_path / "upload" / d, d)
            client.upload_file(str(f), s3.bucket, f"{tmp_path.name}/landing/{d}/{f.name}")
        for dag_id in DAGS:
            st.set_paused(dag_id, False)

        def settled():
            loop = [r for r in st.runs("continual_alignment") if r["run_type"] == "asset_triggered"]
            runs = {d: st.runs(d) for d in DAGS[1:]}
            busy = any(r["state"] not in ("success", "failed") for rs in runs.values() for r in rs)
            return loop if loop and not busy else None

        st.wait_for(settled, "continual_alignment triggered by the baseline's asset, all runs done", 720,
                    every_s=5)
        ingest_runs = [r for r in st.runs("preference_ingest") if r["state"] == "success"]
        for dag_id in DAGS[1:]:
            runs = st.runs(dag_id)
            assert runs and all(r["run_type"] == "asset_triggered" for r in runs), runs
            assert all(r["state"] == "success" for r in runs), (dag_id, runs)
        # One ingest run took the files: one baseline run and one loop run followed, not one per event.
        assert len(st.runs("continual_dpo_baseline")) == 1, (ingest_runs, st.runs("continual_dpo_baseline"))
        # Both workers took tasks, each in its own folder; no task read the other's.
        took = {h.name: (h / "work").exists() for h in hosts}
        assert all(took.values()), took

        reg = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
        cands = reg.search_model_versions(f"name = '{model_name(cfg.project, 'candidate')}'")
        assert sorted(v.tags["h3ops.dimension"] for v in cands) == sorted(DIMS)
        assert len(reg.search_model_versions(f"name = '{model_name(cfg.project, 'merged')}'")) == 1
        stages = reg.search_model_versions(f"name = '{model_name(cfg.project, 'continual')}'")
        assert sorted(v.tags["h3ops.dimension"] for v in stages) == sorted(DIMS)
