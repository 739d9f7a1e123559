"""Where a run finds its pipeline config: conf, then the Airflow Variable, then $H3OPS_CONFIG.

Runs are real `dag.test()` runs, so the Variable is read the way a worker reads it (through the
task's execution API); a run with none of the three fails with a message that says where to set it.
"""
from __future__ import annotations

import pytest

from h3ops.names import CONFIG_ENV, CONFIG_VARIABLE, IMAGE_CONFIG
from tests.pipeline_helpers import ROOT, tiny_config


PROBE_DAG = """
from airflow.sdk import DAG, task
from plugins.defaults import START, config_param

with DAG(dag_id={dag_id!r}, schedule=None, start_date=START, params={{"config": config_param()}}) as dag:
    @task
    def probe(*, params=None) -> dict:
        from h3ops.config import ConfigError
        from plugins.operators import pipeline_config
        try:
            return {{"project": pipeline_config(params).project}}
        except ConfigError as e:
            return {{"error": str(e)}}
    probe()
"""


def _probe_dag(dag_id: str, folder, monkeypatch):
    """A DAG with one task that loads the run's config the way every h3ops task does and returns
    what it got. dag.test() runs DAGs from the configured dags folder: point it at this one's."""
    from airflow.dag_processing.dagbag import DagBag

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{dag_id}.py").write_text(PROBE_DAG.format(dag_id=dag_id))
    from airflow import settings
    monkeypatch.setattr(settings, "DAGS_FOLDER", str(folder))  # the dags-folder bundle's path
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags[dag_id]


def _probe(dag, conf=None) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dr = dag.test(run_conf=conf)
    with create_session() as s:
        row = s.execute(XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids="probe",
                                           key="return_value")).scalars().first()
        return XComModel.deserialize_value(row)


@pytest.fixture
def no_config_anywhere(monkeypatch, h3ops_airflow_db):
    from airflow.models.variable import Variable

    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.delenv(f"AIRFLOW_VAR_{CONFIG_VARIABLE.upper()}", raising=False)
    monkeypatch.chdir(ROOT)  # where the old relative default (examples/smollm2.yaml) would be found
    Variable.delete(CONFIG_VARIABLE)
    yield
    Variable.delete(CONFIG_VARIABLE)


def test_a_run_with_no_config_fails_saying_where_to_set_it(no_config_anywhere, tmp_path, monkeypatch):
    got = _probe(_probe_dag("h3ops_config_probe_none", tmp_path / "dags", monkeypatch))
    assert "error" in got, f"a run with no config loaded one anyway: {got}"
    assert CONFIG_VARIABLE in got["error"] and CONFIG_ENV in got["error"]


def test_the_variable_names_the_config_and_conf_wins_over_it(no_config_anywhere, tmp_path, monkeypatch):
    from airflow.models.variable import Variable

    by_variable = tiny_config(tmp_path / "a", project="from-variable")
    by_conf = tiny_config(tmp_path / "b", project="from-conf")
    by_env = tiny_config(tmp_path / "c", project="from-env")
    monkeypatch.setenv(CONFIG_ENV, str(by_env))
    dag = _probe_dag("h3ops_config_probe_variable", tmp_path / "dags", monkeypatch)
    assert _probe(dag) == {"project": "from-env"}  # the env default, when no Variable is set
    Variable.set(CONFIG_VARIABLE, str(by_variable))
    assert _probe(dag) == {"project": "from-variable"}
    assert _probe(dag, {"config": str(by_conf)}) == {"project": "from-conf"}


def test_the_variable_may_name_an_s3_config(no_config_anywhere, tmp_path, s3_server, monkeypatch):
    from airflow.models.variable import Variable

    key = f"configs/{tmp_path.name}/pipeline.yaml"
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=key,
                                  Body=tiny_config(tmp_path, project="from-s3").read_bytes())
    for var, value in s3_server.env().items():
        monkeypatch.setenv(var, value)
    Variable.set(CONFIG_VARIABLE, f"s3://{s3_server.bucket}/{key}")
    assert _probe(_probe_dag("h3ops_config_probe_s3", tmp_path / "dags", monkeypatch)) == {"project": "from-s3"}
    Variable.set(CONFIG_VARIABLE, f"s3://{s3_server.bucket}/configs/missing.yaml")
    got = _probe(_probe_dag("h3ops_config_probe_s3_missing", tmp_path / "dags", monkeypatch))
    assert "configs/missing.yaml" in got.get("error", "") and "not readable" in got["error"]


def test_every_dag_leaves_the_config_to_the_run(h3ops_dagbag):
    """A default fixed at parse time would shadow the Variable: every DAG's `config` defaults to None."""
    for dag in h3ops_dagbag.dags.values():
        assert dag.params.get_param("config").value is None, dag.dag_id


def test_the_shipped_config_is_valid_and_every_deployment_names_it():
    import yaml

    from h3ops.config import load_config

    cfg = load_config(ROOT / IMAGE_CONFIG.removeprefix("/opt/h3ops/"))
    assert all(d.is_s3 for d in cfg.dimensions)  # no shared disk on a stack: data lands in S3
    assert cfg.store and cfg.store.startswith("s3://")  # and tasks hand datasets over through it
    for dockerfile in ("airflow", "worker-gpu"):
        text = (ROOT / "infra" / "docker" / f"{dockerfile}.Dockerfile").read_text()
        assert "COPY examples ./examples" in text and f"{CONFIG_ENV}={IMAGE_CONFIG}" in text, dockerfile
    compose = yaml.safe_load((ROOT / "infra" / "compose" / "docker-compose.yml").read_text())
    assert IMAGE_CONFIG in compose["x-airflow-env"][CONFIG_ENV]
    env_example = (ROOT / "infra" / "compose" / ".env.example").read_text()
    assert f"H3OPS_PROJECT={cfg.project}\n" in env_example  # serving follows this project's production
    values = yaml.safe_load((ROOT / "infra" / "k8s" / "values.yaml").read_text())
    assert {"name": CONFIG_ENV, "value": IMAGE_CONFIG} in values["env"]
    for template in ("pod-template-cpu.yaml", "pod-template-gpu.yaml"):
        pod = yaml.safe_load((ROOT / "infra" / "k8s" / template).read_text())
        assert {"name": CONFIG_ENV, "value": IMAGE_CONFIG} in pod["spec"]["containers"][0]["env"], template
