"""lm-eval built-in tasks (MATH, GSM8K, ARC, MMLU) exactly as lm-eval defines them — prompts, few-shot
examples, filters and metrics from its own task files — with only the data location changed: the
pinned Hub revision, or local files in the dataset's published layout (hub_datasets.yaml).

A group (mmlu, minerva_math) read from a local folder runs the member tasks whose configs the folder
holds and aggregates them as lm-eval's group does: the mean weighted by each member's size.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from evaluation import hub_data


class BuiltinTaskError(ValueError):
    """An lm-eval task that cannot be built on the given data; names the task and files."""


def _member_task(entry: dict, config: str) -> str:
    members = entry["lm_eval"]["members"]
    if isinstance(members, str):
        return members.format(config=config)
    if config not in members:
        raise BuiltinTaskError(f"config {config!r} is not one of lm-eval's {entry['lm_eval']['task']!r} members "
                               f"{sorted(members)}")
    return members[config]


def local_members(key: str) -> list[tuple[str, str]]:
    """(config, lm-eval task) for every config the local folder holds."""
    entry = hub_data.pin(key)
    members = entry["lm_eval"]["members"]
    configs = [c for c in hub_data.local_configs(key) if isinstance(members, str) or c in members]
    out = [(c, _member_task(entry, c)) for c in configs]
    if not out:
        raise BuiltinTaskError(f"{hub_data.local_root(key)}: no config folder with a test split "
                               f"({entry['files']['test']!r})")
    return out


def _local_overrides(key: str, config: str) -> dict:
    entry = hub_data.pin(key)
    files = {split: [str(p) for p in hub_data.local_files(key, split, config)] for split in entry["files"]}
    files = {s: f for s, f in files.items() if f}
    over = {"dataset_path": "parquet", "dataset_name": None, "dataset_kwargs": {"data_files": files}}
    # lm-eval reads only the splits a task names; a split the local copy lacks is switched off.
    for field in ("training_split", "validation_split", "fewshot_split"):
        over[field] = None
    return over


def build_tasks(key: str) -> tuple[list, str | None]:
    """(lm-eval Task/Group objects, group name or None) for a pinned lm-eval dataset."""
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    tm = TaskManager()
    entry = hub_data.pin(key)

    def build(name: str, overrides: dict):
        spec = tm._entry(name)  # lm-eval's own registered config (no public API merges overrides into it)
        if spec is None:
            raise BuiltinTaskError(f"lm-eval has no task {name!r}")
        cfg = dict(overrides)
        try:
            return tm._factory.build(spec, overrides=cfg, registry=tm._index)
        except Exception as e:  # lm-eval raises bare exceptions for data it cannot use
            raise BuiltinTaskError(f"lm-eval task {name!r} on {overrides.get('dataset_kwargs')}: "
                                   f"{type(e).__name__}: {e}") from e

    if hub_data.local_root(key) is not None:
        tasks = []
        for config, name in local_members(key):
            over = _local_overrides(key, config)
            # Keep the splits the task itself names and the local copy holds.
            base = tm._factory._load_full_config(tm._entry(name), None)
            for field in ("training_split", "validation_split", "fewshot_split"):
                if base.get(field) in over["dataset_kwargs"]["data_files"]:
                    over[field] = base[field]
            tasks.append(build(name, over))
        return tasks, None
    hub_data.check_online(key)
    over = {"dataset_kwargs": {"revision": hub_data.revision(key)}}
    return [build(entry["lm_eval"]["task"], over)], entry["lm_eval"]["task"]


@dataclass(frozen=True)
class BuiltinSource:
    """A data source for the runner's digest and row selection: one item per member task."""
    key: str

    def path(self) -> Path | None:
        return hub_data.local_root(self.key)

    def digest(self) -> str:
        return hub_data.digest(self.key)

    def loader(self, _path) -> list[dict]:
        if hub_data.local_root(self.key) is None:
            return [{"task": hub_data.pin(self.key)["lm_eval"]["task"]}]
        return [{"task": t, "config": c} for c, t in local_members(self.key)]


def run(lm, key: str, metric: str, *, chat: bool, limit: int | None) -> tuple[float, list[dict]]:
    """Run the task(s); returns (metric as a fraction, per-item records)."""
    from lm_eval import simple_evaluate

    tasks, group = build_tasks(key)
    name, _, filt = metric.partition(",")
    try:
        res = simple_evaluate(model=lm, tasks=tasks, limit=limit, apply_chat_template=chat, log_samples=True,
                              bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                              fewshot_random_seed=1234)
    except Exception as e:
        raise BuiltinTaskError(f"lm-eval failed on {key!r}: {type(e).__name__}: {e}") from e
    records, total, n_total = [], 0.0, 0
    for task, samples in res["samples"].items():
        mine = [s for s in samples if s.get("filter", "none") == filt]
        for s in mine:
            rec = {"task": task, "doc_id": s["doc_id"], "target": s["target"], "correct": bool(s[name])}
            if "acc" == name:
                rec["loglikelihoods"] = [float(r[0]) for r in s["filtered_resps"]]
            else:
                rec["response"] = s["resps"][0][0]
                rec["extracted"] = s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"]
            records.append(rec)
        if group is None:
            value = res["results"][task][metric]
            total += float(value) * len(mine)
            n_total += len(mine)
    if not records:
        raise BuiltinTaskError(f"lm-eval returned no samples for {key!r} under filter {filt!r}")
    value = float(res["results"][group][metric]) if group is not None else total / n_total
    return value, records
