"""The continual alignment loop end to end: Airflow's own `dag.test()`, a real `mlflow server`
(PostgreSQL backend, artifacts proxied to an S3 server on loopback), tiny real models, real TRL
DPO steps, a real R-TSVM merge, the real cpu-3h evaluation with a limit of one item per benchmark.

One test walks the whole story in order (each stage needs the previous one's registry state):
malformed file → quarantined, nothing registered; good files → asset events → the loop run before
the continual baseline: DPO per dimension → register → merge → register → evaluate → gate fails for
want of continual references and nothing moves; the continual baseline → its asset event; the
loop again makes no duplicates and fails against continual checkpoints scored 100; then
production and continual get low scores logged through the registry API (tiny models' scores are
flat, so both the failing and the passing comparison are staged this way: the merge's own scores
are real), the same DAG passes the gate and promotes, serving gets its manifest, and a manual
rollback restores the previous production.
"""
from __future__ import annotations

import json

import pytest

from h3ops.config import load_config
from tests.pipeline_helpers import DIMS, tiny_config, write_malformed, write_pairs

pytestmark = pytest.mark.slow


def _states(dr) -> dict[str, str]:
    out = {}
    for ti in dr.get_task_instances():
        key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        out[key] = str(getattr(ti.state, "value", ti.state))
    return out


def _asset_events(run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        rows = s.execute(select(AssetModel.name, AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                         .where(AssetEvent.source_run_id == run_id)).all()
    return [{"asset": n, **(e or {})} for n, e in rows]


def _xcom(dr, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as s:
        row = s.execute(XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id,
                                           key="return_value")).scalars().first()
        return XComModel.deserialize_value(row)


def _outputs_on_local_disk(dr, workdir) -> list[tuple[str, str]]:
    """(task, value) for every XCom of the run that names a path on a worker's disk: the next task
    may run on another host or in a pod, so only URIs (and digests) may pass between tasks."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        rows = s.execute(select(XComModel).where(XComModel.run_id == dr.run_id,
                                                 XComModel.dag_id == dr.dag_id)).scalars().all()
        values = [(r.task_id, json.dumps(XComModel.deserialize_value(r), default=str)) for r in rows]
    return [(t, v) for t, v in values if str(workdir) in v]


def _chosen_scores(reg, cfg, uri: str, value: float) -> None:
    """Log an evaluation run with chosen metrics (every cpu-3h benchmark at `value`), as if measured
    with the pipeline's own evaluation settings (same run digest, so the gate compares them)."""
    from evaluation.runner import plan
    from evaluation.scoring import aggregate, get_suite

    ev = cfg.evaluation
    metrics = {k: value for k in get_suite(ev.suite).keys}
    scores = aggregate(metrics, ev.suite, run_digest=plan(ev.suite, ev.limit, ev.judge)[2])
    reg.log_evaluation(uri, metrics, scores, scores.suite_digest)


def test_continual_alignment_loop(tmp_path, mlflow_server, h3ops_dagbag, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for var, value in mlflow_server.s3.env().items():  # tasks hand datasets over through the store
        monkeypatch.setenv(var, value)
    cfg_path = tiny_config(tmp_path, tracking_uri=mlflow_server.url,
                           store=f"s3://{mlflow_server.s3.bucket}/{tmp_path.name}")
    cfg = load_config(cfg_path)
    conf = {"config": str(cfg_path)}
    from h3ops.steps.common import registry
    reg = registry(cfg)
    bag = h3ops_dagbag

    # 1. A malformed file only: quarantined with its report, no asset event, nothing trains.
    write_malformed(tmp_path / "landing" / "helpfulness", "helpfulness")
    dr = bag.dags["preference_ingest"].test(run_conf=conf)
    assert str(dr.state) in ("success", "DagRunState.SUCCESS"), _states(dr)
    assert _asset_events(dr.run_id) == []
    quarantined = list((tmp_path / "work" / "quarantine" / "helpfulness").glob("*bad.jsonl*"))
    assert len(quarantined) == 2 and any(p.name.endswith(".report.json") for p in quarantined)
    dr = bag.dags["continual_alignment"].test(run_conf=conf)
    assert _states(dr)["plan"] == "skipped"
    assert all(reg.versions(cfg.project, k) == [] for k in ("candidate", "merged", "continual"))

    # 2. Good files for every dimension: one asset event per dimension carrying the digest.
    for d in DIMS:
        write_pairs(tmp_path / "landing" / d, d)
    dr = bag.dags["preference_ingest"].test(run_conf=conf)
    # A lineage event per dimension, and the run's one scheduling event listing them all.
    events = _asset_events(dr.run_id)
    (combined,) = [e for e in events if e["asset"] == "h3ops.preferences"]
    events = [e for e in events if e is not combined]
    assert sorted(e["asset"] for e in events) == [f"h3ops.preferences.{d}" for d in sorted(DIMS)]
    assert all(e["digest"].startswith("sha256:") and e["rows"] > 0 for e in events)
    digests = {e["dimension"]: e["digest"] for e in events}
    assert {d: v["digest"] for d, v in combined["dimensions"].items()} == digests

    # 3. The loop run before the continual baseline exists (a manual trigger: on schedule it waits
    #    for the baseline's asset): DPO per dimension → register → merge → register → evaluate →
    #    gate. With no continual reference for this data the gate fails and says why; nothing moves.
    dr = bag.dags["continual_alignment"].test(run_conf=conf)
    states = _states(dr)
    assert set(states.values()) == {"success"}, states
    assert {f"train[{i}]" for i in range(3)} <= set(states)
    assert _outputs_on_local_disk(dr, tmp_path / "work") == []
    cands = reg.versions(cfg.project, "candidate")
    assert sorted(v.tags["h3ops.dimension"] for v in cands) == sorted(DIMS)
    for v in cands:
        assert v.tags["h3ops.kind"] == "candidate"
        assert v.tags["h3ops.data_digest"] == digests[v.tags["h3ops.dimension"]]
    (merged,) = reg.versions(cfg.project, "merged")
    assert merged.tags["h3ops.method"] == "r_tsvm"
    assert sorted(p["uri"] for p in json.loads(merged.tags["h3ops.parents"])) == sorted(v.uri for v in cands)
    assert merged.tags["h3ops.base_digest"] == cands[0].tags["h3ops.base_digest"]
    assert reg.get_scores(merged.uri) is not None
    decision = _xcom(dr, "gate")
    assert decision["passed"] is False and decision["candidate"] == merged.uri and decision["continual"] == []
    (rule,) = [r for r in decision["rules"] if r["name"] == "beats_continual"]
    assert rule["passed"] is False and "no continual" in rule["detail"], rule
    assert _xcom(dr, "promote")["promoted"] is False
    assert reg.production(cfg.project) is None  # a failed gate moves nothing

    # 4. The continual-DPO baseline: three sequential stages, registered and evaluated, then the
    #    asset event the loop is scheduled on, naming the stages and the data they were trained on.
    dr = bag.dags["continual_dpo_baseline"].test(run_conf=conf)
    assert set(_states(dr).values()) == {"success"}, _states(dr)
    assert _outputs_on_local_disk(dr, tmp_path / "work") == []
    stages = reg.versions(cfg.project, "continual")
    assert [v.tags["h3ops.dimension"] for v in stages] == list(DIMS)
    assert json.loads(stages[1].tags["h3ops.parents"])[0]["uri"] == stages[0].uri  # stage 2 ← stage 1
    assert all(reg.get_scores(v.uri) is not None for v in stages)
    (published,) = _asset_events(dr.run_id)
    assert published["asset"] == "h3ops.continual_baseline"
    assert published["stages"] == [v.uri for v in stages] and published["data"] == digests
    # Make the continual baseline unbeatable (every metric 100, logged as a real evaluation run):
    # the merge is then a worse candidate whatever tiny float differences do to its scores.
    for v in stages:
        _chosen_scores(reg, cfg, v.uri, 100.0)

    # 5. The loop again (what clearing every task does): it registers nothing new, and the gate now
    #    compares with the continual stages of the same data and fails on the numbers.
    dr = bag.dags["continual_alignment"].test(run_conf=conf)
    assert set(_states(dr).values()) == {"success"}
    assert len(reg.versions(cfg.project, "candidate")) == 3
    assert [v.version for v in reg.versions(cfg.project, "merged")] == [merged.version]
    decision = _xcom(dr, "gate")
    assert decision["passed"] is False and decision["continual"] == [v.uri for v in stages]
    assert [r["passed"] for r in decision["rules"] if r["name"] == "beats_continual"] == [False]
    assert reg.production(cfg.project) is None

    # 6. A first production model (the base, bootstrapped), then low scores logged for production
    #    and the continual stages: now the same merge beats both and the gate promotes it.
    from h3ops.pipeline import run_step
    base = run_step("prepare_base", cfg)
    boot = run_step("bootstrap_production", cfg, {"base": base})
    assert boot["promoted"] is True
    first_prod = reg.production(cfg.project)
    for uri in [first_prod.uri] + [v.uri for v in stages]:
        _chosen_scores(reg, cfg, uri, 0.0)
    dr = bag.dags["continual_alignment"].test(run_conf=conf)
    result = _xcom(dr, "promote")
    assert result["promoted"] is True, result
    assert reg.production(cfg.project).uri == merged.uri
    assert reg.previous_production(cfg.project).uri == first_prod.uri

    # 7. Ops hand-off and rollback through the manual DAG.
    dr = bag.dags["promote_to_serving"].test(run_conf=conf)
    manifest = json.loads((tmp_path / "serving" / "production.json").read_text())
    assert manifest["model_uri"] == merged.uri
    dr = bag.dags["promote_to_serving"].test(run_conf={**conf, "action": "rollback"})
    assert set(_states(dr).values()) == {"success"}
    assert reg.production(cfg.project).uri == first_prod.uri
    assert json.loads((tmp_path / "serving" / "production.json").read_text())["model_uri"] == first_prod.uri
