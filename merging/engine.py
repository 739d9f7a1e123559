"""The merge engine: validate inputs, stream tensors through a method, write a checkpoint atomically.

It knows nothing about any method: for each tensor it reads the base and candidate values, hands a
TensorTask to the method's function and writes what comes back. Memory stays near one tensor per
input (plus one read ahead), whatever the model's depth.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from h3ops.checkpoint import MANIFEST, CheckpointError, Manifest, atomic_output_dir
from h3ops.digest import digest_dir
from h3ops.safe_checkpoint import check_checkpoint_folder
from merging import chat_templates, settings, slices, vocab
from merging.card import write_card
from merging.config import MergeConfig, parse_config
from merging.io import CheckpointReader, ShardedWriter, parse_size
from merging.method import MergeConfigError, TensorTask

log = logging.getLogger(__name__)

COPIED = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json")
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class MergeError(ValueError):
    """Inputs that cannot be merged (names, shapes, non-finite values); nothing is written."""


def _check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise MergeConfigError(f"device {device!r}: {e}") from None
    if dev.type not in ("cpu", "cuda"):
        raise MergeConfigError(f"device {device!r}: use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MergeConfigError(f"device {device!r}: CUDA is not available on this machine")
    return dev


def _plan(cfg: MergeConfig, readers: list[CheckpointReader], voc: vocab.Vocab | None):
    """The output layout (sorted names, dtype, shape) and where each output tensor's inputs come from.

    `models:` configs: every input has the same tensor names and shapes. `slices:`: output layers
    are drawn from the sources' layer ranges (merging/slices.py), each with its slice's inputs.
    Embeddings re-indexed to a merged vocabulary (`voc`) have its rows, whatever the inputs' rows."""
    specs = cfg.all_inputs
    if cfg.slices is None:
        ref = readers[0]
        ref_names = set(ref.names())
        for spec, r in zip(specs[1:], readers[1:]):
            names = set(r.names())
            missing, extra = sorted(ref_names - names), sorted(names - ref_names)
            if missing or extra:
                what = (f"missing tensor(s) {missing[:5]}" if missing else "") + \
                       ("; " if missing and extra else "") + (f"unexpected tensor(s) {extra[:5]}" if extra else "")
                raise MergeError(f"{spec.ref}: {what} compared with {specs[0].ref}")
        at = settings.positions(ref_names)
        sources = {n: slices.Planned([(i, n) for i in range(len(readers))], None, at[n]) for n in ref_names}
        n_layers = None
    else:
        sources, n_layers = slices.layout(cfg.slices, lambda i: readers[i].names(), [s.ref for s in specs])
    out_dtype = _TORCH_DTYPES.get(cfg.out_dtype or "")
    plan = []
    # Sorted names: the output layout does not depend on the inputs' tensor order or sharding.
    for n in sorted(sources):
        (i0, n0), *rest = sources[n].inputs
        shape = readers[i0].shape(n0)
        if voc is not None and not voc.identity and vocab.is_embedding(n, shape):
            sources[n].reindex, shape = True, (voc.size, *shape[1:])
        skip = 1 if sources[n].reindex else 0  # re-indexed rows: only the widths must agree
        for i, name in rest:
            if readers[i].shape(name)[skip:] != readers[i0].shape(n0)[skip:]:
                raise MergeError(f"tensor {name!r}: shape {list(readers[i].shape(name))} in {specs[i].ref} but "
                                 f"{list(readers[i0].shape(n0))} in {specs[i0].ref}")
        dt = readers[i0].dtype(n0)
        plan.append((n, out_dtype if (out_dtype is not None and dt.is_floating_point) else dt, shape))
    return plan, sources, n_layers


def _all_finite(t: torch.Tensor) -> bool:
    # A sum is finite only if every term is (one cheap pass); an overflowing sum falls back to isfinite.
    if bool(torch.isfinite(t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32))):
        return True
    return bool(torch.isfinite(t).all())


def _finite(t: torch.Tensor, name: str, where: str) -> None:
    if not _all_finite(t):
        bad = int((~torch.isfinite(t)).sum())
        raise MergeError(f"tensor {name!r} in {where}: {bad} non-finite value(s) (NaN/Inf)")


class TaskStream:
    """Re-iterable stream of TensorTasks over the float tensors (what a method's prepass reads)."""

    def __init__(self, engine: "_Run"):
        self._run = engine
        self.params, self.model_params = engine.cfg.params, engine.cfg.model_params

    def __iter__(self) -> Iterator[TensorTask]:
        for name, dtype, _ in self._run.plan:
            if dtype.is_floating_point:
                yield self._run.task(name, self._run.load(name))

    def __len__(self) -> int:
        return sum(1 for _, dtype, _ in self._run.plan if dtype.is_floating_point)


# Elements per block when an elementwise method streams a large tensor: 1 MiB of float32 per input,
# so the float32 copies stay in cache and their memory is reused, instead of a fresh multi-MB buffer
# per input per tensor whose every page faults on first write (the cost that dominated linear merges).
BLOCK = 1 << 18


class _Run:
    """One merge: the parsed config, the open readers and the per-tensor work."""

    def __init__(self, cfg: MergeConfig, readers: list[CheckpointReader], plan, sources, seed: int,
                 device: torch.device, voc: vocab.Vocab | None = None):
        self.cfg, self.readers, self.plan, self.seed, self.device = cfg, readers, plan, seed, device
        self.vocab = voc
        self.sources: dict[str, slices.Planned] = sources
        self.state: dict[str, Any] = {}
        self.collector = None  # a diagnostics Collector when asked for; None costs nothing per tensor
        # Gradient / filter parameters and slices: every tensor's own, resolved now so a bad value is
        # named before anything is read or written.
        self.tensor_params: dict[str, tuple[dict, list[dict]]] = {}
        if cfg.per_tensor is not None:
            self.tensor_params = {n: cfg.params_for(n, sources[n].t, sources[n].slice) for n, dt, _ in plan
                                  if dt.is_floating_point}

    def has_base(self, name: str) -> bool:
        """Is this tensor's first input the base (the method's origin, not a candidate)?"""
        if self.cfg.slices is None:
            return self.cfg.base is not None
        return self.cfg.base is not None and self.cfg.method.uses_base and self.sources[name].inputs[0][0] == 0

    def inputs(self, name: str) -> list:
        """The ModelSpecs one tensor's values come from, in load order (base first when there is one)."""
        return [self.cfg.all_inputs[i] for i, _ in self.sources[name].inputs]

    def load(self, name: str) -> list[torch.Tensor]:
        """Raw values of one tensor from every input (base first when there is one); embeddings
        re-indexed to the merged vocabulary (float32) when there is one."""
        raw = [self.readers[i].get(n) for i, n in self.sources[name].inputs]
        if self.sources[name].reindex:
            raw = self.vocab.reindex(name, [s.path for s in self.inputs(name)], [t.float() for t in raw])
        return raw

    def blockwise(self, name: str) -> bool:
        """Stream this tensor through the method in blocks (elementwise methods, large float tensors)?"""
        i, n = self.sources[name].inputs[0]
        r = self.readers[i]
        return (self.cfg.method.elementwise and not self.sources[name].reindex and self.collector is None
                and r.dtype(n).is_floating_point and _numel(r.shape(n)) > BLOCK)

    def task(self, name: str, raw: list[torch.Tensor]) -> TensorTask:
        values = []
        for i, t in enumerate(raw):
            v = t.to(self.device, torch.float32, non_blocking=True)
            raw[i] = None  # drop the stored-dtype copy now: peak memory is set by the largest tensor
            values.append(v)
        has_base = self.has_base(name)
        base = values[0] if has_base else None
        cands = values[1:] if has_base else values
        params, model_params = self.tensor_params.get(name) or (self.cfg.params, self.cfg.model_params)
        return TensorTask(name, base, cands, params, model_params, self.seed, self.state)

    def compute(self, name: str, out_dtype: torch.dtype, raw: list[torch.Tensor]) -> torch.Tensor:
        if not raw[0].dtype.is_floating_point:
            # Integer/bool buffers are not merged: copied when every input agrees.
            specs = self.inputs(name)
            for spec, t in zip(specs[1:], raw[1:]):
                if not torch.equal(t, raw[0]):
                    raise MergeError(f"non-float tensor {name!r} differs between {specs[0].ref} "
                                     f"and {spec.ref}; integer/bool buffers must be identical")
            return raw[0]
        shape = tuple(raw[0].shape)
        task = self.task(name, raw)
        task.consumable = self.collector is None  # the collector reads the candidates after the method
        out = self._apply(task, shape)
        if self.collector is not None:  # after the method: it folds in what the method reported
            self.collector.observe(name, task.base, task.candidates)
        return out.to(out_dtype).cpu()

    def blocks(self, name: str, out_dtype: torch.dtype) -> Iterator[torch.Tensor]:
        """The merged values of one tensor, flat, BLOCK elements at a time (elementwise methods)."""
        i0, n0 = self.sources[name].inputs[0]
        n = _numel(self.readers[i0].shape(n0))
        for lo in range(0, n, BLOCK):
            hi = min(n, lo + BLOCK)
            task = self.task(name, [self.readers[i].get_range(t, lo, hi) for i, t in self.sources[name].inputs])
            task.consumable = True
            yield self._apply(task, (hi - lo,)).to(out_dtype).cpu()

    def _apply(self, task: TensorTask, shape: tuple[int, ...]) -> torch.Tensor:
        name = task.name
        out = self.cfg.method.fn(task)
        if tuple(out.shape) != shape:
            raise MergeError(f"method {self.cfg.method.name} returned shape {list(out.shape)} for {name!r}, "
                             f"expected {list(shape)}")
        # Inputs are checked through the output: the methods mask by multiplying, never by selecting,
        # so a NaN/Inf anywhere in an input reaches the result (0·NaN = NaN). Only then do we look
        # for the culprit (read again: the method may have consumed its copies), which saves one full
        # pass over every input.
        if not _all_finite(out):
            for spec, t in zip(self.inputs(name), self.load(name)):
                _finite(t.to(torch.float32), name, spec.ref)
            _finite(out, name, f"the {self.cfg.method.name} result")
        return out


def _copy_side_files(cfg: MergeConfig, ref: Path, dest: Path, allow_remote_code: bool, n_layers: int | None,
                     voc: vocab.Vocab | None) -> None:
    # Inputs passed check_checkpoint_folder: no links to follow, and code only when allowed, in which
    # case the code config.json's auto_map names comes along.
    for fname in COPIED + (tuple(p.name for p in sorted(ref.glob("*.py"))) if allow_remote_code else ()):
        if (ref / fname).is_file():
            shutil.copy2(ref / fname, dest / fname)
    if voc is not None and voc.tokenizer is not None:
        voc.tokenizer.save_pretrained(dest)  # a vocabulary built here, written as mergekit writes it
    else:
        tok_root = (voc.files_from if voc is not None else None) or ref
        for fname in TOKENIZER_FILES:
            if (tok_root / fname).is_file():
                shutil.copy2(tok_root / fname, dest / fname)
    chat_templates.write(cfg.chat_template, [s.path for s in cfg.all_inputs], dest)
    conf = dest / "config.json"
    if (cfg.out_dtype or n_layers is not None or voc is not None) and conf.is_file():
        data = json.loads(conf.read_text())
        if voc is not None:
            data["vocab_size"] = voc.size
        if cfg.out_dtype:
            for k in [k for k in ("dtype", "torch_dtype") if k in data] or ["dtype"]:
                data[k] = cfg.out_dtype
        if n_layers is not None:  # a slices merge has as many layers as its slices span
            data["num_hidden_layers"] = n_layers
            if isinstance(data.get("layer_types"), list) and data["layer_types"]:
                kinds = data["layer_types"]
                data["layer_types"] = [kinds[min(src.start + k, len(kinds) - 1)] for sl in cfg.slices
                                       for src in sl.sources[:1] for k in range(sl.length)]
        conf.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _progress_bar(enabled: bool | None, total: int):
    from tqdm.auto import tqdm

    # None: appear only if the merge is still running after a few seconds.
    return tqdm(total=total, unit="param", unit_scale=True, desc="merge", disable=enabled is False,
                delay=0 if enabled else 3, file=sys.stderr, leave=False)


def merge(config: dict | str | Path, out_dir: str | Path, *, seed: int = 0, device: str = "cpu",
          max_shard_size: str | int = "2GB", overwrite: bool = False, allow_pickle: bool = False,
          allow_remote_code: bool = False, progress: bool | None = None, diagnostics: bool = False,
          resolve: Callable[[str], Path] | None = None) -> Path:
    """Merge the checkpoints a mergekit-style config names into `out_dir`; return the folder.

    Every input (and the tokenizer source) must be plain data (h3ops.safe_checkpoint): no links,
    no code unless `allow_remote_code`, no pickles unless `allow_pickle`. `resolve` maps model
    references that are not local folders (e.g. `models:/name/3`) to local copies; h3ops.json
    records the references as written, with the digests of what was read.

    `diagnostics`: also write diagnostics.json (per-tensor conflict statistics, inputs' digests)
    inside the folder, atomically with it, and log its per-layer-type summary (stdout stays the
    caller's: `h3ops step` prints only its JSON result there; `h3ops merge --diagnostics` prints it)."""
    start = time.perf_counter()
    cfg = parse_config(config, resolve=resolve)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise MergeConfigError(f"seed must be an int, got {seed!r}")
    parse_size(max_shard_size)
    dev = _check_device(device)
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: output folder already exists (pass --overwrite to replace it)")
    specs = cfg.all_inputs
    if any(out.resolve() == s.path for s in specs):
        raise MergeConfigError(f"{out}: the output folder is one of the inputs")
    for folder in dict.fromkeys([s.path for s in specs] + [cfg.tokenizer_source] * bool(cfg.tokenizer_source)):
        check_checkpoint_folder(folder, allow_remote_code=allow_remote_code, allow_pickle=allow_pickle,
                                weights=any(folder == s.path for s in specs))
    readers = [CheckpointReader(s.path, allow_pickle=allow_pickle) for s in specs]
    if diagnostics and cfg.slices is not None:
        raise MergeConfigError("--diagnostics compares whole models; it does not apply to a slices config")
    voc = vocab.build_for(cfg.vocab, specs, cfg.base, readers) if cfg.vocab is not None else None
    plan, sources, n_layers = _plan(cfg, readers, voc)
    run = _Run(cfg, readers, plan, sources, seed, dev, voc)
    # One thread reads ahead, one hashes the parents (whole folders) beside the merge, not before it.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="h3ops-read")
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="h3ops-digest")
    threads = torch.get_num_threads()
    try:
        if cfg.method.elementwise and dev.type == "cpu":
            # Cache-sized blocks are memory-bound: one intra-op thread streams them fastest
            # (measured, bench/README.md "Merging"), and the parents' hashing gets the other core.
            torch.set_num_threads(1)
        digests = [hasher.submit(digest_dir, s.path) for s in specs]
        if cfg.method.prepass is not None:
            run.state.update(cfg.method.prepass(TaskStream(run)) or {})
        if diagnostics:
            from merging.diagnostics import Collector

            run.collector = Collector(cfg.method.name)
            # Set after the prepass: spectral methods see the sink and report α_t, k_l, STI into it.
            run.state["diagnostics"] = run.collector.sink
        with atomic_output_dir(out, overwrite=overwrite) as tmp:
            total = sum(_numel(shape) for _, _, shape in plan)
            with ShardedWriter(tmp, plan, max_shard_size) as writer, _progress_bar(progress, total) as bar:
                def prefetch(i: int):
                    # Read the next tensor while this one is computed (I/O and compute overlap);
                    # blockwise tensors are read block by block as they are merged.
                    if i >= len(plan) or run.blockwise(plan[i][0]):
                        return None
                    return pool.submit(run.load, plan[i][0])

                ahead = prefetch(0)
                for i, (name, dtype, shape) in enumerate(plan):
                    raw = ahead.result() if ahead is not None else None
                    ahead = prefetch(i + 1)
                    if raw is None:
                        writer.write_parts(name, run.blocks(name, dtype))
                    else:
                        writer.write(name, run.compute(name, dtype, raw))
                    del raw
                    bar.update(_numel(shape))
            _copy_side_files(cfg, specs[0].path, tmp, allow_remote_code, n_layers, voc)
            parents = [{"uri": s.ref, "digest": d.result(), "role": "base" if (cfg.base and s is cfg.base) else "candidate"}
                       for s, d in zip(specs, digests)]
            write_card(tmp, method=cfg.method.name, parents=parents, raw_config=cfg.raw, seed=seed)
            Manifest(kind="merged", produced_by="h3ops.merge", method=cfg.method.name, seed=seed, parents=parents,
                     parameters={"global": cfg.params,
                                 "models": [{"model": m.ref, **p} for m, p in zip(cfg.models, cfg.model_params)],
                                 # gradients and filter lists as written (the values above are their first)
                                 **({"per_tensor": {"global": cfg.per_tensor[0], "models": cfg.per_tensor[1]}}
                                    if cfg.per_tensor else {})},
                     settings={"config": cfg.raw, "out_dtype": cfg.out_dtype, "max_shard_size": str(max_shard_size),
                               "device": str(dev), "shards": writer.files}).write(tmp)
            if run.collector is not None:
                summary = _write_diagnostics(run, parents, tmp, max_shard_size, dev)
    finally:
        torch.set_num_threads(threads)
        pool.shutdown(wait=True, cancel_futures=True)
        hasher.shutdown(wait=True, cancel_futures=True)
    if diagnostics:
        from merging.diagnostics import format_summary

        log.info("merge diagnostics of %s:\n%s", out, format_summary(summary))
    n_params = sum(_numel(s) for _, _, s in plan)
    print(f"h3ops merge: {cfg.method.name} of {len(cfg.models)} model(s) -> {out} | {len(plan)} tensors, "
          f"{n_params / 1e6:.1f}M params, {len(writer.files)} shard(s), {time.perf_counter() - start:.1f}s",
          file=sys.stderr)
    return out


def _write_diagnostics(run: _Run, parents: list[dict], tmp: Path, max_shard_size, dev) -> dict:
    """diagnostics.json inside the temp output folder: renamed with it, removed with it on failure."""
    from merging.diagnostics import DIAGNOSTICS, write_report

    settings = {"config": run.cfg.raw, "seed": run.seed, "device": str(dev), "max_shard_size": str(max_shard_size),
                "has_base": run.cfg.base is not None}
    report = run.collector.report(parents, settings=settings)
    write_report(report, tmp / DIAGNOSTICS)
    return report["summary"]


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


__all__ = ["merge", "MergeError", "MANIFEST", "CheckpointError", "TaskStream"]
