"""DPO on several processes (torchrun, gloo on this CPU machine): the 2-process run matches the
1-process run with the same global batch, a killed launcher group resumes from its last
checkpoint, and `dpo.devices` sizes both the launch and the GPU pool slots."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignment.dataset import build_dataset
from alignment.dpo import DPOSettings, check_devices, train
from h3ops.checkpoint import Manifest

pytestmark = [pytest.mark.usefixtures("one_torch_thread")]
STEPS = 4
# Gradients averaged over 2 ranks (all-reduce) vs accumulated over 2 micro-batches: the same sum
# in a different order, so float32 results may differ in the last bits. Measured: 0.0 here.
ATOL = 1e-6
ROOT = Path(__file__).resolve().parents[1]


def settings(**kw) -> DPOSettings:
    # global batch 4 = 2 pairs per device x 2 devices, or 2 pairs x 2 accumulation steps on one
    return DPOSettings.preset("test", max_steps=STEPS, batch_size=4, per_device_batch_size=2, **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("ddp-data")
    src = root / "honesty.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"Question: what is {i} plus {i}?", "chosen": f"Answer: {2 * i}.",
                                       "rejected": "I cannot help with that request.", "dimension": "honesty",
                                       "source": "test"}) + "\n" for i in range(16)))
    return build_dataset([src], root / "ds", dimension="honesty", eval_holdout=0).uri


@pytest.fixture(scope="module")
def one_process(tiny_base, data, tmp_path_factory) -> Path:
    return train(tiny_base, data, tmp_path_factory.mktemp("p1") / "out", settings=settings(), dimension="honesty")


@pytest.fixture(scope="module")
def two_processes(tiny_base, data, tmp_path_factory) -> Path:
    return train(tiny_base, data, tmp_path_factory.mktemp("p2") / "out", settings=settings(), dimension="honesty",
                 devices=2)


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(ckpt / "model.safetensors")


def losses(ckpt: Path) -> list[float]:
    return [h["loss"] for h in json.loads((ckpt / "train_history.json").read_text())]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(one_process, two_processes, tiny_base):
    m = Manifest.read(two_processes)
    assert m.parameters["devices"] == m.parameters["world_size"] == 2
    assert m.parameters["distributed_type"] == "MULTI_CPU" and m.parameters["param_dtype"] == "float32"
    assert m.parameters["metrics"]["steps"] == STEPS
    l1, l2 = losses(one_process), losses(two_processes)
    assert len(l1) == len(l2) == STEPS and l1[-1] < l1[0] - 0.1  # it trained
    assert max(abs(a - b) for a, b in zip(l1, l2)) <= ATOL
    a, b, base = weights(one_process), weights(two_processes), weights(tiny_base)
    assert a.keys() == b.keys() == base.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= ATOL
    assert max((a[k] - base[k]).abs().max().item() for k in a) > 100 * ATOL  # the weights moved
    # one consolidated safetensors folder with its manifest, loadable as a plain HF model
    assert sorted(p.name for p in two_processes.glob("*.safetensors")) == ["model.safetensors"]
    assert sorted(p.name for p in two_processes.parent.iterdir()) == ["out"]  # no work folder left


@pytest.mark.slow
def test_killed_launcher_group_resumes_from_its_checkpoint(two_processes, tiny_base, data, tmp_path):
    out, marker = tmp_path / "runs" / "out", tmp_path / "held"
    job = tmp_path / "job.py"
    job.write_text(textwrap.dedent(f"""
        from alignment.dpo import DPOSettings, train
        train({str(tiny_base)!r}, {data!r}, {str(out)!r}, dimension="honesty", devices=2,
              callbacks=["h3ops.testing:HoldAtCheckpoint"],
              settings=DPOSettings.preset("test", max_steps={STEPS}, batch_size=4, per_device_batch_size=2))
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HOLD_MARKER": str(marker),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(job)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "job.log", "wb"))
    from tests.fixtures.servers import wait_until

    try:
        wait_until(marker.exists, "2-process DPO to hold after its step-2 checkpoint", 300, proc, tmp_path / "job.log")
        launcher_group = int(marker.read_text())
        assert launcher_group != os.getpgid(proc.pid)  # torchrun runs in a group of its own
        os.killpg(launcher_group, signal.SIGKILL)  # the training processes die at once, no cleanup
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert not out.exists()
    [work] = [p for p in out.parent.iterdir() if p.name.startswith(".out.work-")]
    assert (work / "checkpoint-2" / "trainer_state.json").is_file()
    resumed = train(tiny_base, data, out, settings=settings(), dimension="honesty", devices=2)
    m = Manifest.read(resumed)
    assert m.parameters["resumed_from_step"] == 2 and m.parameters["metrics"]["steps"] == STEPS
    a, b = weights(two_processes), weights(resumed)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= ATOL  # ends where the uninterrupted run did
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_devices_must_split_the_global_batch_and_a_bad_launch_leaves_nothing(tiny_base, data, tmp_path):
    with pytest.raises(ValueError, match="batch_size 4 is not a multiple of per_device_batch_size 2 x devices 3"):
        check_devices(settings(), 3)
    with pytest.raises(ValueError, match="devices must be a positive integer"):
        train(tiny_base, data, tmp_path / "x", settings=settings(), dimension="honesty", devices=0)
    with pytest.raises(ValueError, match="callbacks must be 'module:Name' strings"):
        train(tiny_base, data, tmp_path / "y", settings=settings(), dimension="honesty", devices=2,
              callbacks=[object()])
    assert list(tmp_path.iterdir()) == []


def test_dpo_devices_sizes_the_pool_slots_and_a_mismatch_is_refused(tmp_path):
    from h3ops.config import ConfigError, load_config
    from plugins.pools import check_slots, dpo_task_args

    cfg = tmp_path / "p.yaml"
    text = (ROOT / "examples" / "tiny.yaml").read_text().replace("  preset: test\n", "  preset: test\n  devices: 4\n")
    cfg.write_text(text)
    assert load_config(cfg).dpo.devices == 4
    assert dpo_task_args(str(cfg)) == {"pool": "gpu", "queue": "gpu", "pool_slots": 4}
    assert dpo_task_args(str(tmp_path / "absent.yaml"))["pool_slots"] == 1
    with pytest.raises(ValueError, match="dpo.devices is 4 but this task holds 2 slot"):
        check_slots(4, 2, str(cfg))
    cfg.write_text(text.replace("devices: 4", "devices: 0"))
    with pytest.raises(ConfigError, match="dpo.devices: Input should be greater than or equal to 1"):
        load_config(cfg)


def test_a_dpo_task_holding_fewer_slots_than_devices_fails_in_airflow(tmp_path, h3ops_airflow_db, capfd):
    """Airflow's own runner: the guard reads the running task's pool_slots (a cheap step stands in
    for DPO); the task whose slots match the config's dpo.devices runs, the other fails."""
    import uuid

    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    cfg = tmp_path / "p.yaml"
    cfg.write_text((ROOT / "examples" / "tiny.yaml").read_text()
                   .replace("  preset: test\n", "  preset: test\n  devices: 2\n")
                   .replace("workdir: .h3ops/work", f"workdir: {tmp_path / 'work'}"))
    dag_id = f"h3ops_slots_{uuid.uuid4().hex[:8]}"
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "slots.py").write_text(textwrap.dedent(f"""
        from airflow.sdk import DAG, task
        from plugins.defaults import START
        from plugins.pools import run_dpo_in_task

        with DAG({dag_id!r}, schedule=None, start_date=START, params={{"config": {str(cfg)!r}}}) as dag:
            @task(pool="default_pool", pool_slots=2)
            def two_slots(*, params=None):
                return run_dpo_in_task("merge_methods", params, methods=["tsvm"])

            @task(pool="default_pool", pool_slots=1, retries=0)
            def one_slot(*, params=None):
                return run_dpo_in_task("merge_methods", params, methods=["tsvm"])

            two_slots()
            one_slot()
    """))
    # dag.test() runs serialized DAGs only: write this one to the metadata DB as the DAG processor would.
    bag = BundleDagBag(dag_folder=str(tmp_path / "dags"), bundle_path=str(tmp_path / "dags"), bundle_name="dags-folder")
    assert bag.import_errors == {}, bag.import_errors
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)
    dr = bag.dags[dag_id].test()
    states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dr.get_task_instances()}
    assert states == {"two_slots": "success", "one_slot": "failed"}
    out, err = capfd.readouterr()
    assert "dpo.devices is 2 but this task holds 1 slot(s) of pool 'gpu'" in out + err
