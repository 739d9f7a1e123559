"""The merge_benchmark DAG end to end on tiny models with Airflow's own `dag.test()`: registered
candidates merged with the plan's settings, the heuristic mixture baseline trained at each ratio
(real TRL DPO), everything registered and evaluated (cpu-3h, one item per benchmark), and one
leaderboard (best ratio kept) with its 3H trade-off plot logged to MLflow."""
from __future__ import annotations

import json

import pytest

from h3ops.config import load_config
from h3ops.pipeline import run_step
from tests.pipeline_helpers import DIMS, tiny_config, write_pairs

pytestmark = pytest.mark.slow


def _xcom(dr, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        row = s.execute(XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id,
                                           key="return_value")).scalars().first()
        return XComModel.deserialize_value(row)


@pytest.mark.usefixtures("one_torch_thread")
def test_merge_benchmark_dag_ranks_merges_and_mixtures(tmp_path, h3ops_dagbag, monkeypatch):
    from h3ops.steps.common import local_model, registry
    from h3ops.testing import make_candidate

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg_path = tiny_config(tmp_path)
    cfg = load_config(cfg_path)
    base = run_step("prepare_base", cfg)
    for i, d in enumerate(DIMS):
        write_pairs(tmp_path / "landing" / d, d)
        run_step("ingest", cfg, {"dimension": d})
        cand = make_candidate(local_model(cfg, base), tmp_path / "cands" / d, seed=i + 1, dimension=d)
        run_step("register", cfg, {"path": str(cand), "kind": "candidate", "dimension": d,
                                    "parents": [base], "base": base})
    dag = h3ops_dagbag.dags["merge_benchmark"]
    dr = dag.test(run_conf={"config": str(cfg_path), "methods": ["ties", "r_tsvm"]})
    states = {(ti.task_id, ti.map_index): str(getattr(ti.state, "value", ti.state)) for ti in dr.get_task_instances()}
    assert set(states.values()) == {"success"}, states
    assert sum(1 for t, _ in states if t == "train_mixture") == 3  # ratios 1/5, 1/10, 1/20
    board = _xcom(dr, "leaderboard")
    roles = {r["label"]: r["role"] for r in board["rows"]}
    assert {"ties", "r_tsvm"} <= set(roles) and roles["ties"] == "merged"
    mixed = [lab for lab, role in roles.items() if role == "mixture"]
    assert len(mixed) == 1 and mixed[0].startswith("heuristic@ratio=")  # the best ratio kept
    reg = registry(cfg)
    files = {a.path for a in reg.client.list_artifacts(board["run_id"])}
    assert {"leaderboard.md", "leaderboard.json", "tradeoff.png"} <= files
    mixtures = reg.versions(cfg.project, "mixture")
    # 1/10 and 1/20 of 4 helpfulness pairs both round to no other pair: the same mixed data and the
    # same model content, so registration finds one version for both (idempotency), 2 in all.
    assert len(mixtures) == 2 and all(v.tags["h3ops.kind"] == "mixture" for v in mixtures)
    assert json.loads((tmp_path / "work" / "benchmark").glob("*/leaderboard.json").__next__().read_text()) == board["rows"]
