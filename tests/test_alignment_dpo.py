"""Real TRL DPO steps on the tiny Llama: full and LoRA, lineage, resume after a crash and after
kill -9, idempotency, bad inputs, continual DPO. Torch-heavy: keep these tests serial."""
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

from alignment.dataset import DatasetError, build_dataset
from alignment.dpo import DPOSettings, train
from h3ops.checkpoint import CheckpointError, Manifest
from h3ops.digest import digest_dir

STEPS = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def pairs(dim: str, n: int = 8) -> list[dict]:
    return [{"prompt": f"Question: what is {i} plus {i}?", "chosen": f"Answer: {2 * i}.",
             "rejected": "I cannot help with that request because it could cause harm.",
             "dimension": dim, "source": "test"} for i in range(n)]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("dpo-data")
    out = {}
    for dim in ("honesty", "helpfulness"):
        src = root / f"{dim}.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in pairs(dim)))
        out[dim] = build_dataset([src], root / dim, dimension=dim, eval_holdout=0).uri
    return out


def settings(**kw) -> DPOSettings:
    return DPOSettings.preset("test", max_steps=STEPS, **kw)


def history(ckpt: Path) -> list[dict]:
    return json.loads((ckpt / "train_history.json").read_text())


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def full_run(tiny_base, datasets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full") / "honesty-dpo"
    return train(tiny_base, datasets["honesty"], out, settings=settings(), dimension="honesty")


def test_full_dpo_learns_the_preference_and_writes_a_checkpoint_with_lineage(full_run, tiny_base, datasets):
    from transformers import AutoModelForCausalLM

    h = history(full_run)
    assert len(h) == STEPS
    assert h[-1]["loss"] < h[0]["loss"] - 0.1
    assert h[-1]["rewards/margins"] > h[0]["rewards/margins"] + 0.1
    m = Manifest.read(full_run)
    assert (m.kind, m.produced_by, m.dimension, m.method) == ("candidate", "h3ops.train.dpo", "honesty", "dpo")
    assert m.parents == [{"uri": str(tiny_base), "digest": digest_dir(tiny_base)}]
    ds_digest = json.loads((Path(datasets["honesty"]) / "dataset.json").read_text())["digest"]
    assert m.data_digests == {"honesty": ds_digest}
    assert m.settings["beta"] == 0.1 and m.parameters["metrics"]["steps"] == STEPS
    model = AutoModelForCausalLM.from_pretrained(full_run)
    base, tuned = load_file(tiny_base / "model.safetensors"), load_file(full_run / "model.safetensors")
    assert base.keys() == tuned.keys()
    assert any(not torch.equal(base[k], tuned[k]) for k in base)
    assert model.config.num_hidden_layers == 2
    assert leftovers(full_run.parent) == []  # no work folder, no temporary output


def test_rerun_with_same_inputs_returns_the_existing_output(full_run, tiny_base, datasets):
    before = (full_run / "model.safetensors").stat().st_mtime_ns
    assert train(tiny_base, datasets["honesty"], full_run, settings=settings(), dimension="honesty") == full_run
    assert (full_run / "model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="different checkpoint"):
        train(tiny_base, datasets["honesty"], full_run, settings=settings(beta=0.2), dimension="honesty")


def test_lora_is_merged_into_full_weights(tiny_base, datasets, tmp_path):
    out = train(tiny_base, datasets["helpfulness"], tmp_path / "lora", settings=settings(lora=True),
                dimension="helpfulness")
    h = history(out)
    assert h[-1]["loss"] < h[0]["loss"] and h[-1]["rewards/margins"] > h[0]["rewards/margins"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    base, tuned = load_file(tiny_base / "model.safetensors"), load_file(out / "model.safetensors")
    assert base.keys() == tuned.keys()  # a plain full checkpoint: mergeable with the others
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert changed and all("proj" in k for k in changed)
    assert Manifest.read(out).method == "dpo-lora"


class Crash(RuntimeError):
    pass


def test_crash_after_a_checkpoint_resumes_from_it(full_run, tiny_base, datasets, tmp_path):
    from transformers import TrainerCallback

    class CrashAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 2:
                raise Crash("simulated crash after the step-2 checkpoint")

    out = tmp_path / "resumed"
    with pytest.raises(Crash):
        train(tiny_base, datasets["honesty"], out, settings=settings(), dimension="honesty",
              callbacks=[CrashAfterSave()])
    assert not out.exists()
    work = [p for p in tmp_path.iterdir() if p.name.startswith(".resumed.work-")]
    assert len(work) == 1 and (work[0] / "checkpoint-2").is_dir()
    train(tiny_base, datasets["honesty"], out, settings=settings(), dimension="honesty")
    m = Manifest.read(out)
    assert m.parameters["resumed_from_step"] == 2 and m.parameters["metrics"]["steps"] == STEPS
    assert [r["step"] for r in history(out)] == list(range(1, STEPS + 1))  # restored with the state
    # the resumed run ends where the uninterrupted one did
    a, b = load_file(full_run / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert leftovers(tmp_path) == []


def test_kill_9_during_training_then_rerun_resumes(tiny_base, datasets, tmp_path):
    out, marker = tmp_path / "killed", tmp_path / "held-at-checkpoint"
    script = tmp_path / "job.py"
    # The job holds still after its step-2 checkpoint, so the kill lands mid-training whatever the load.
    script.write_text(textwrap.dedent(f"""
        import time
        from pathlib import Path
        from transformers import TrainerCallback
        from alignment.dpo import DPOSettings, train

        class Hold(TrainerCallback):
            def on_save(self, args, state, control, **kw):
                if state.global_step == 2:
                    Path({str(marker)!r}).write_text("2")
                    while True:
                        time.sleep(1)

        train({str(tiny_base)!r}, {datasets['honesty']!r}, {str(out)!r}, dimension="honesty",
              settings=DPOSettings.preset("test", max_steps={STEPS}), callbacks=[Hold()])
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "job.log", "wb"))
    try:
        from tests.fixtures.servers import wait_until

        wait_until(marker.exists, "training job to reach its step-2 checkpoint", 300, proc, tmp_path / "job.log")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    train(tiny_base, datasets["honesty"], out, settings=settings(), dimension="honesty")
    assert Manifest.read(out).parameters["resumed_from_step"] == 2
    assert leftovers(tmp_path) == []


def test_bad_inputs_fail_clearly_and_leave_nothing(tiny_base, datasets, tmp_path):
    with pytest.raises(DatasetError, match="dataset dimension 'honesty' does not match the job's dimension 'helpfulness'"):
        train(tiny_base, datasets["honesty"], tmp_path / "a", settings=settings(), dimension="helpfulness")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="broken: no model.safetensors"):
        train(broken, datasets["honesty"], tmp_path / "b", settings=settings(), dimension="honesty")
    import shutil

    shutil.copytree(tiny_base, tmp_path / "garbled")
    (tmp_path / "garbled" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="base checkpoint does not load"):
        train(tmp_path / "garbled", datasets["honesty"], tmp_path / "c", settings=settings(), dimension="honesty")
    with pytest.raises(ValueError, match="unknown dimension 'kindness'"):
        train(tiny_base, datasets["honesty"], tmp_path / "d", settings=settings(), dimension="kindness")
    with pytest.raises(ValueError, match="multiple of per_device_batch_size"):
        DPOSettings(batch_size=3, per_device_batch_size=2)
    with pytest.raises(ValueError, match="unknown DPO setting"):
        DPOSettings.from_dict({"betta": 0.1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "garbled"]


def test_continual_two_stages_chain_their_lineage(tiny_base, datasets, tmp_path):
    from alignment.continual import run_continual

    outs = run_continual(tiny_base, [("honesty", datasets["honesty"]), ("helpfulness", datasets["helpfulness"])],
                         tmp_path / "cont", settings=DPOSettings.preset("test", max_steps=2))
    assert [p.name for p in outs] == ["stage1-honesty", "stage2-helpfulness"]
    m1, m2 = Manifest.read(outs[0]), Manifest.read(outs[1])
    assert m1.kind == m2.kind == "continual"
    assert m1.parents == [{"uri": str(tiny_base), "digest": digest_dir(tiny_base)}]
    assert m2.parents == [{"uri": str(outs[0]), "digest": digest_dir(outs[0])}]
    assert (m1.dimension, m2.dimension, m2.parameters["stage"]) == ("honesty", "helpfulness", 2)
    a, b = load_file(outs[0] / "model.safetensors"), load_file(outs[1] / "model.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    again = run_continual(tiny_base, [("honesty", datasets["honesty"]), ("helpfulness", datasets["helpfulness"])],
                          tmp_path / "cont", settings=DPOSettings.preset("test", max_steps=2))
    assert again == outs and Manifest.read(outs[1]).created_at == m2.created_at
    from alignment.cli import main  # the CLI twin finds the same finished stages

    assert main(["train", "continual", "--base", str(tiny_base), "--stages",
                 f"honesty={datasets['honesty']},helpfulness={datasets['helpfulness']}", "--out",
                 str(tmp_path / "cont"), "--preset", "test", "--set", "max_steps=2"]) == 0
    assert Manifest.read(outs[1]).created_at == m2.created_at


def test_train_cli_reruns_to_the_same_output_and_reports_bad_input(full_run, tiny_base, datasets, capsys):
    from h3ops.cli import main

    before = (full_run / "model.safetensors").stat().st_mtime_ns
    argv = ["train", "dpo", "--base", str(tiny_base), "--data", datasets["honesty"], "--dimension", "honesty",
            "--out", str(full_run), "--preset", "test", "--set", f"max_steps={STEPS}"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(full_run)
    assert (full_run / "model.safetensors").stat().st_mtime_ns == before
    assert main(argv[:-2] + ["--set", "betta=1"]) == 2
    assert "--set 'betta=1'" in capsys.readouterr().err


def test_the_same_job_asked_twice_is_trained_once_and_each_copy_keeps_its_own_lineage(tiny_base, datasets, tmp_path):
    """The continual baseline's first stage and the first dimension's candidate are one DPO job."""
    from transformers import TrainerCallback

    jobs = tmp_path / "jobs"
    stage1 = train(tiny_base, datasets["honesty"], tmp_path / "cont" / "stage1-honesty", settings=settings(),
                   dimension="honesty", kind="continual", jobs=jobs, extra={"stage": 1})

    class NoTraining(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            raise AssertionError("trained again")

    cand = train(tiny_base, datasets["honesty"], tmp_path / "cand" / "honesty", settings=settings(),
                 dimension="honesty", jobs=jobs, callbacks=[NoTraining()])
    a, b = load_file(stage1 / "model.safetensors"), load_file(cand / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ms, mc = Manifest.read(stage1), Manifest.read(cand)
    assert (ms.kind, mc.kind) == ("continual", "candidate")
    assert mc.parameters["reused_from"] == str(stage1) and "stage" not in mc.parameters
    assert mc.parameters["metrics"] == ms.parameters["metrics"]
    assert mc.parameters["job_key"] == ms.parameters["job_key"] and mc.parameters["run_key"] != ms.parameters["run_key"]
    assert mc.parents == [{"uri": str(tiny_base), "digest": digest_dir(tiny_base)}]
    assert leftovers(cand.parent) == []

    # Other settings are another job; a pointer whose checkpoint lost its job key is not trusted.
    with pytest.raises(AssertionError, match="trained again"):
        train(tiny_base, datasets["honesty"], tmp_path / "other", settings=settings(beta=0.2),
              dimension="honesty", jobs=jobs, callbacks=[NoTraining()])
    m = json.loads((stage1 / "h3ops.json").read_text())
    m["parameters"]["job_key"] = "sha256:forged"
    (stage1 / "h3ops.json").write_text(json.dumps(m))
    with pytest.raises(AssertionError, match="trained again"):
        train(tiny_base, datasets["honesty"], tmp_path / "third", settings=settings(), dimension="honesty",
              jobs=jobs, callbacks=[NoTraining()])
    assert not (tmp_path / "other").exists() and not (tmp_path / "third").exists()
