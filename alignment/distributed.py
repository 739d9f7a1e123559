"""DPO on several devices: the step launches one training process per device with torchrun.

`launch` runs `python -m torch.distributed.run --standalone --nproc_per_node N -m
alignment.distributed SPEC` in its own process group and waits. Every rank builds the same TRL
trainer (alignment.dpo.build_trainer) with FSDP (full shard, one unit per decoder layer, a
consolidated FULL_STATE_DICT when saving), so a checkpoint needs no rank to hold more than its
shard while training. Ranks talk over NCCL on GPUs and gloo on CPUs (how the tests run it).

The spec, the persisted dataset and TRL's step checkpoints all live in the job's work folder: a
killed launcher (or a killed worker, which makes torchrun stop the others) rerun with the same
inputs resumes from the last saved step. Rank 0 writes the consolidated model into
`work/final`; alignment.dpo.train turns that into the output checkpoint (dtype, h3ops.json).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

SPEC = "launch.json"
FINAL = "final"
RESULT = "result.json"


class LaunchError(RuntimeError):
    """The distributed training processes failed; the message holds the tail of their log."""


def fsdp_args(model_config: dict[str, Any]) -> dict[str, Any]:
    """TrainingArguments for FSDP2: shard every decoder layer, gather a full state dict to save."""
    arch = (model_config.get("architectures") or ["LlamaForCausalLM"])[0]
    layer = arch.replace("ForCausalLM", "DecoderLayer")
    return {"fsdp": True,
            "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": [layer],
                            "state_dict_type": "FULL_STATE_DICT", "reshard_after_forward": True}}


def launch(work: Path, spec: dict[str, Any], devices: int, *, log: Path | None = None,
           timeout_s: float | None = None) -> dict[str, Any]:
    """Run the spec on `devices` processes; return rank 0's result (metrics, history, resume step)."""
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    work.mkdir(parents=True, exist_ok=True)
    (work / SPEC).write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    final = work / FINAL
    if (final / RESULT).is_file():  # a previous launch finished; only the rename was missing
        return json.loads((final / RESULT).read_text())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
           "-m", "alignment.distributed", str(work / SPEC)]
    # One BLAS thread per rank unless the operator chose otherwise: N ranks share the host's cores.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "TOKENIZERS_PARALLELISM": "false"}
    log = log or work / "launch.log"
    with open(log, "ab") as out:
        # Its own process group, so stopping it stops every rank; and a parent killed with SIGKILL
        # (a lost Airflow worker) takes torchrun down with it instead of leaving ranks on the GPUs.
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
        try:
            rc = proc.wait(timeout=timeout_s)
        except BaseException:  # timeout, task killed by Airflow (SIGTERM → exception), Ctrl-C
            _kill_group(proc)
            raise
    if rc != 0 or not (final / RESULT).is_file():
        tail = log.read_text(errors="replace")[-4000:]
        raise LaunchError(f"distributed DPO on {devices} process(es) failed (exit {rc}); log {log}:\n{tail}")
    return json.loads((final / RESULT).read_text())


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the launching process dies (Linux prctl)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop torchrun and every rank it started (they share the process group we created)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def import_object(path: str):
    """'package.module:Name' → the object (callbacks named in a spec, built in every rank)."""
    import importlib

    module, _, name = path.partition(":")
    if not name:
        raise ValueError(f"callback {path!r} must be written 'module:Name'")
    return getattr(importlib.import_module(module), name)


def worker(spec_path: str) -> None:
    """One rank: build the trainer, train (resuming from the last checkpoint), rank 0 saves."""
    from alignment.dpo import DPOSettings, build_trainer, last_checkpoint, train_metrics

    spec = json.loads(Path(spec_path).read_text())
    work = Path(spec["work"])
    settings = DPOSettings.from_dict(spec["settings"])
    callbacks = [import_object(c)() for c in spec.get("callbacks", [])]
    trainer = build_trainer(Path(spec["base"]), work, settings, callbacks, devices=spec["devices"],
                            sharded=True)
    last = last_checkpoint(work)
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    final = work / FINAL
    trainer.save_model(str(final))  # collective under FSDP: every rank takes part, rank 0 writes
    if trainer.accelerator.is_main_process:
        result = train_metrics(trainer)
        result["resumed_from_step"] = int(last.name.split("-")[-1]) if last else 0
        result["world_size"] = trainer.accelerator.num_processes
        # Accelerate shards with FSDP only on accelerators; on CPUs (gloo) it falls back to DDP.
        result["distributed_type"] = str(trainer.accelerator.distributed_type.value)
        result["param_dtype"] = str(next(trainer.model.parameters()).dtype).removeprefix("torch.")
        # Under FSDP mixed precision Accelerate keeps fp32 master shards (param_dtype) and all-gathers
        # the weights in the policy's dtype for forward and backward: that is the compute dtype.
        policy = getattr(getattr(trainer.accelerator.state, "fsdp_plugin", None), "mixed_precision_policy", None)
        compute = getattr(policy, "param_dtype", None)
        result["compute_dtype"] = str(compute).removeprefix("torch.") if compute else result["param_dtype"]
        import torch

        if torch.cuda.is_available():
            result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        tmp = final / f".{RESULT}.tmp"
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        tmp.replace(final / RESULT)  # written last: its presence means the folder is complete
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    worker(sys.argv[1])
