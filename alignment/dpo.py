"""DPO on one dimension's preference data with TRL: full fine-tune or LoRA (merged into full weights).

Defaults are the paper's (Appendix C.1, following SimPO): 1 epoch, cosine schedule with 10% warmup,
max length 4096, global batch 128, Adam; β and learning rate from SimPO's DPO recipe for
Llama-3-8B-Instruct (β=0.01, lr=7e-7). Presets shrink the batch and length for CPU runs.

A job is identified by its run key = digest(base digest, data digest, dimension, settings). TRL
checkpoints go to a hidden work folder named after that key next to the output, so a killed job
rerun with the same inputs resumes from its last saved step; the output folder appears (atomic
rename) only when training finished, and a rerun of a finished job returns it untouched.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from alignment import reuse
from alignment.dataset import load_dataset
from alignment.schema import check_dimension
from h3ops.checkpoint import CheckpointError, Manifest, atomic_output_dir, read_manifest, weight_files
from h3ops.digest import digest_dir, digest_json, short

PRODUCED_BY = "h3ops.train.dpo"


@dataclass
class DPOSettings:
    beta: float = 0.01
    learning_rate: float = 7e-7
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 128  # global: per_device_batch_size × gradient accumulation
    per_device_batch_size: int = 2
    max_length: int = 4096
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    optimizer: str = "adamw_torch"
    loss_type: str = "sigmoid"
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target: str | list[str] = "all-linear"
    precision: str = "fp32"  # fp32 | bf16 (bf16 autocast; faster on CPUs with AMX)
    gradient_checkpointing: bool = False
    # Full DPO: the reference's log-probs are computed once before training (by TRL), so no second
    # full copy of the model sits in memory while training. LoRA needs neither: the reference is the
    # model with its adapter disabled.
    precompute_ref_log_probs: bool = True
    save_steps: int = 50  # checkpoint cadence for resuming; does not change the result
    seed: int = 0

    # Fields that change how a job runs but not what it computes: not part of the run key.
    _RUN_ONLY = ("save_steps",)

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.batch_size % self.per_device_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of per_device_batch_size "
                             f"{self.per_device_batch_size}")
        for name in ("beta", "learning_rate", "batch_size", "per_device_batch_size", "max_length", "save_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "DPOSettings":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        return replace(cls(**PRESETS[name]), **overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DPOSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DPO setting(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in self._RUN_ONLY}


PRESETS: dict[str, dict[str, Any]] = {
    # 7-8B models on GPUs: bf16 weights, activations recomputed in the backward pass.
    "paper": {"precision": "bf16", "gradient_checkpointing": True},
    # SmolLM2-135M on a few CPU cores: small batches, short sequences, a larger step size.
    "cpu-demo": {"batch_size": 4, "per_device_batch_size": 2, "max_length": 256, "learning_rate": 5e-6,
                 "beta": 0.1, "save_steps": 10},
    # Tiny test models: one pair per step, steps that visibly move the margin.
    "test": {"batch_size": 2, "per_device_batch_size": 2, "max_length": 128, "learning_rate": 1e-3,
             "beta": 0.1, "warmup_ratio": 0.0, "lr_scheduler": "constant", "save_steps": 2, "lora_r": 8,
             "lora_alpha": 16, "lora_dropout": 0.0},
}


def _check_base(base: Path) -> None:
    if not (base / "config.json").is_file():
        raise CheckpointError(f"{base}: base checkpoint does not load (no config.json)")
    weight_files(base)  # refuses pickle-only and weightless folders with a clear message


def _load_base(base: Path, dtype):
    """(model, tokenizer) from a checkpoint folder; dtype None keeps the folder's own dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_base(base)
    try:
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype or "auto")
    except Exception as e:  # noqa: BLE001 - any loader failure means the same thing to the caller
        raise CheckpointError(f"{base}: base checkpoint does not load ({type(e).__name__}: {e})") from e
    return model, tok


def _to_trl(rows: list[dict]):
    from datasets import Dataset

    def conv(r):
        p = r["prompt"]
        if isinstance(p, str):  # conversational format so TRL applies the chat template
            p = [{"role": "user", "content": p}]
        return {"prompt": p, "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}]}

    return Dataset.from_list([conv(r) for r in rows])


def last_checkpoint(work: Path) -> Path | None:
    if not work.is_dir():
        return None
    cks = [p for p in work.glob("checkpoint-*") if p.is_dir() and (p / "trainer_state.json").is_file()]
    return max(cks, key=lambda p: int(p.name.split("-")[-1])) if cks else None


def run_key(base_digest: str, data_digest: str, dimension: str, settings: DPOSettings, kind: str) -> str:
    return digest_json({"base": base_digest, "data": data_digest, "dimension": dimension, "kind": kind,
                        "settings": settings.key_dict()})


def train(base: str | Path, dataset: str | Path, out_dir: str | Path, *, settings: DPOSettings | None = None,
          dimension: str, overwrite: bool = False, kind: str = "candidate",
          parents: list[dict[str, str]] | None = None, callbacks: list | None = None,
          tracking_uri: str | None = None, extra: dict[str, Any] | None = None, devices: int = 1,
          launch: bool | None = None, jobs: Path | None = None) -> Path:
    """DPO-train `base` on `dataset` for `dimension`; returns the checkpoint folder `out_dir`.

    With `devices` > 1 (or `launch=True`) the job runs as that many torchrun processes with FSDP
    (alignment.distributed); `callbacks` must then be 'module:Name' strings, built in every process.
    `jobs`: this worker's job index (alignment.reuse): a job already trained for another request
    (the continual baseline's first stage, say) is copied instead of trained again.
    """
    settings = settings or DPOSettings()
    check_dimension(dimension)
    check_devices(settings, devices)
    base, out_dir = Path(base), Path(out_dir)
    data = load_dataset(dataset, dimension=dimension)
    if not base.is_dir():
        raise CheckpointError(f"{base}: base checkpoint does not load (no such folder)")
    base_digest = digest_dir(base)
    key = run_key(base_digest, data.digest, dimension, settings, kind)
    if out_dir.exists() and not overwrite:
        m = read_manifest(out_dir)
        if m is not None and m.parameters.get("run_key") == key:
            return out_dir  # same inputs, already done
        raise FileExistsError(f"{out_dir}: output folder already holds a different checkpoint "
                              "(pass overwrite=True to replace it)")
    job = reuse.job_key(base_digest, data.digest, dimension, settings.key_dict())

    def manifest(params: dict[str, Any]) -> Manifest:
        return Manifest(kind=kind, produced_by=PRODUCED_BY, method="dpo-lora" if settings.lora else "dpo",
                        parents=parents or [{"uri": str(base), "digest": base_digest}],
                        seed=settings.seed, dimension=dimension, data_digests={dimension: data.digest},
                        settings=settings.to_dict(),
                        parameters={"run_key": key, "job_key": job, "data_uri": data.path, **params, **(extra or {})})

    done = reuse.find(jobs, job) if jobs else None
    if done is not None:
        with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
            trained = reuse.copy_checkpoint(done, tmp)
            manifest({**trained, "reused_from": str(done)}).write(tmp)
        return out_dir
    work = out_dir.parent / f".{out_dir.name}.work-{short(key, 16)}"
    _check_base(base)
    save_trl_dataset(data.train, work)
    launched = devices > 1 if launch is None else launch
    try:
        if launched:
            result = _fit_distributed(base, work, settings, callbacks or [], devices)
        else:
            result = _fit(base, work, settings, [_callback(c) for c in callbacks or []])
    except BaseException:
        if last_checkpoint(work) is None:  # nothing to resume from: leave nothing behind
            shutil.rmtree(work, ignore_errors=True)
        raise
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        _save(result, base, tmp)
        manifest({"metrics": result["metrics"], "resumed_from_step": result["resumed_from_step"],
                  "devices": devices, "distributed_type": result.get("distributed_type", "NO"),
                  **{k: result[k] for k in reuse.TRAINING_FIELDS if k in result}}).write(tmp)
    shutil.rmtree(work, ignore_errors=True)
    if jobs:
        reuse.record(jobs, job, out_dir)
    _log_mlflow(tracking_uri, out_dir, dimension, settings, result, key)
    return out_dir


def check_devices(settings: DPOSettings, devices: int) -> None:
    """The global batch must split evenly over devices × per-device batch (accumulation fills the rest)."""
    if not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices must be a positive integer, got {devices!r}")
    if settings.batch_size % (settings.per_device_batch_size * devices):
        raise ValueError(f"batch_size {settings.batch_size} is not a multiple of per_device_batch_size "
                         f"{settings.per_device_batch_size} x devices {devices}")


def trl_config(work: Path, settings: DPOSettings, devices: int = 1, model_config: dict | None = None,
               sharded: bool = False):
    import torch
    from trl import DPOConfig

    from alignment.distributed import fsdp_args

    accum = settings.batch_size // (settings.per_device_batch_size * devices)
    on_gpu = torch.cuda.is_available()
    sharding = fsdp_args(model_config or {}) if sharded else {}
    checkpointing = settings.gradient_checkpointing
    if sharding and checkpointing:
        # FSDP's own activation checkpointing: the Trainer's variant adds an extra all-gather per layer.
        sharding["fsdp_config"]["activation_checkpointing"] = True
        checkpointing = False
    return DPOConfig(
        output_dir=str(work), use_cpu=not on_gpu, bf16=settings.precision == "bf16", fp16=False,
        per_device_train_batch_size=settings.per_device_batch_size, gradient_accumulation_steps=accum,
        learning_rate=settings.learning_rate, num_train_epochs=settings.epochs, max_steps=settings.max_steps,
        lr_scheduler_type=settings.lr_scheduler, warmup_steps=settings.warmup_ratio, optim=settings.optimizer,
        beta=settings.beta, loss_type=[settings.loss_type], max_length=settings.max_length,
        gradient_checkpointing=checkpointing, save_strategy="steps",
        precompute_ref_log_probs=settings.precompute_ref_log_probs and not settings.lora,
        save_steps=settings.save_steps, save_total_limit=2, logging_steps=1, report_to=[], seed=settings.seed,
        data_seed=settings.seed, disable_tqdm=True, dataloader_num_workers=0, dataset_num_proc=None,
        ddp_find_unused_parameters=False, **sharding,
    )


def save_trl_dataset(rows: list[dict], work: Path) -> Path:
    """The training rows in TRL's format, on disk in the work folder.

    Every rank loads the same files, and TRL's tokenisation and reference log-prob caches land
    next to them (shared by all ranks and kept for a resumed run) instead of in per-process
    temporary folders.
    """
    folder = work / "dataset"
    if not (folder / "dataset_info.json").is_file():
        tmp = work / f".dataset.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        _to_trl(rows).save_to_disk(str(tmp))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return folder


def build_trainer(base: Path, work: Path, settings: DPOSettings, callbacks: list, devices: int = 1,
                  sharded: bool = False):
    """The TRL DPOTrainer for one process (of `devices`), training data from `work/dataset`;
    `sharded`: under torchrun, with FSDP."""
    import torch
    from datasets import load_from_disk
    from transformers import PrinterCallback
    from trl import DPOTrainer

    cfg = json.loads((base / "config.json").read_text())
    args = trl_config(work, settings, devices, cfg, sharded)  # TRL refuses bad settings here, before any load
    # bf16 weights where bf16 runs natively (GPUs: half the memory of fp32); on CPUs fp32 master
    # weights with bf16 autocast.
    bf16_weights = settings.precision == "bf16" and torch.cuda.is_available()
    model, tok = _load_base(base, torch.bfloat16 if bf16_weights else torch.float32)
    ref = None
    peft_config = None
    if settings.lora:
        from peft import LoraConfig

        # With a PEFT model TRL computes reference log-probs with the adapter disabled: no second copy.
        peft_config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha,
                                 lora_dropout=settings.lora_dropout, target_modules=settings.lora_target,
                                 task_type="CAUSAL_LM")
    elif not settings.precompute_ref_log_probs and not sharded:
        ref, _ = _load_base(base, model.dtype)  # under FSDP TRL loads (and shards) it from the base path
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=load_from_disk(str(work / "dataset")),
                         processing_class=tok, peft_config=peft_config, callbacks=callbacks)
    # Progress goes to stderr: stdout belongs to the CLI's JSON result.
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_stderr_logger())
    return trainer


def train_metrics(trainer) -> dict[str, Any]:
    history = [h for h in trainer.state.log_history if "loss" in h]
    summary = next((h for h in reversed(trainer.state.log_history) if "train_runtime" in h), {})
    metrics = {"steps": trainer.state.global_step, "train_runtime_s": summary.get("train_runtime"),
               "first": _pick(history[0]) if history else {}, "last": _pick(history[-1]) if history else {}}
    return {"metrics": metrics, "history": history}


def _fit(base: Path, work: Path, settings: DPOSettings, callbacks: list) -> dict[str, Any]:
    trainer = build_trainer(base, work, settings, callbacks)
    last = last_checkpoint(work)
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    return {"model": trainer.model, "tokenizer": trainer.processing_class, **train_metrics(trainer),
            "resumed_from_step": int(last.name.split("-")[-1]) if last else 0, "lora": settings.lora}


def _fit_distributed(base: Path, work: Path, settings: DPOSettings, callbacks: list, devices: int) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from alignment.distributed import FINAL, launch

    if any(not isinstance(c, str) for c in callbacks):
        raise ValueError("with devices > 1, callbacks must be 'module:Name' strings (built in every process)")
    spec = {"base": str(base), "work": str(work), "settings": settings.to_dict(), "devices": devices,
            "callbacks": list(callbacks)}
    result = launch(work, spec, devices)
    final = work / FINAL
    if settings.lora:  # FSDP saved the adapter; the checkpoint is the base with it merged in
        from peft import PeftModel

        model = PeftModel.from_pretrained(_load_base(base, None)[0], final)
    else:
        model = _load_base(final, None)[0]
    return {"model": model, "tokenizer": AutoTokenizer.from_pretrained(base), "lora": settings.lora, **result}


def _callback(c):
    from alignment.distributed import import_object

    return import_object(c)() if isinstance(c, str) else c


def _stderr_logger():
    """A callback printing each log line to stderr (defined here so the module imports no torch)."""
    from transformers import TrainerCallback

    class StderrLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and logs:
                print(f"[dpo step {state.global_step}/{state.max_steps}] "
                      + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items()),
                      file=sys.stderr, flush=True)
    return StderrLog()


def _pick(h: dict) -> dict[str, float]:
    keys = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "step")
    return {k: float(h[k]) for k in keys if k in h}


def _save(result: dict[str, Any], base: Path, out: Path) -> None:
    import torch

    model = result["model"]
    if result["lora"]:
        model.save_pretrained(out / "adapter")  # kept for inspection; the checkpoint is the merged model
        model = model.merge_and_unload()
    cfg = json.loads((base / "config.json").read_text())
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    model = model.to(getattr(torch, dtype))  # every candidate has the base's dtype, so they merge
    model.save_pretrained(out, safe_serialization=True)
    result["tokenizer"].save_pretrained(out)
    (out / "train_history.json").write_text(json.dumps(result["history"], indent=1) + "\n")


def _log_mlflow(uri: str | None, out: Path, dimension: str, settings: DPOSettings, result, key: str) -> None:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    name = "h3ops-train"
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name)
    run = client.create_run(exp_id, tags={"h3ops.kind": "train", "h3ops.dimension": dimension,
                                          "h3ops.run_key": key, "h3ops.output": str(out)})
    for k, v in settings.to_dict().items():
        client.log_param(run.info.run_id, k, v)
    for h in result["history"]:
        for k, v in _pick(h).items():
            if k != "step":
                client.log_metric(run.info.run_id, k.replace("/", "_"), v, step=int(h.get("step", 0)))
    client.set_terminated(run.info.run_id)
