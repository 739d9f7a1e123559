"""lm-eval runner on local task files: items → JSONL → task YAML (`dataset_path: json`,
absolute `data_files`) → `simple_evaluate` with the `hf` backend on an in-memory model.

Nothing touches the Hub, so it runs with HF_HUB_OFFLINE=1. The task YAMLs are written next to the
per-item outputs so a result can be reproduced with the `lm_eval` CLI (`--include_path`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from h3ops import safe_yaml


class TaskError(ValueError):
    """A task file lm-eval cannot load or run; the message names the file."""


GSM8K_FILTER = [{"name": "flexible-extract", "filter": [
    # The last number in the answer, as lm-eval's own gsm8k task extracts it.
    {"function": "regex", "group_select": -1, "regex_pattern": r"(-?[$0-9.,]{2,})|(-?[0-9]+)"},
    {"function": "take_first"}]}]


def choice_task(name: str, data_file: Path) -> dict:
    return {
        "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test", "output_type": "multiple_choice",
        "doc_to_text": "{{text}}", "doc_to_choice": "{{letters}}", "doc_to_target": "{{gold}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1},
    }


def generate_task(name: str, data_file: Path, max_new_tokens: int, until: list[str]) -> dict:
    return {
        "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test", "output_type": "generate_until",
        "doc_to_text": "{{text}}", "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": until, "do_sample": False, "max_gen_toks": max_new_tokens},
        "filter_list": GSM8K_FILTER,
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": False,
                         "regexes_to_ignore": [",", "\\$", "\\.$"]}],
        "metadata": {"version": 1},
    }


def write_task(folder: Path, task: dict, docs: list[dict]) -> Path:
    """Write the items and the task YAML into `folder`; returns the YAML path."""
    folder.mkdir(parents=True, exist_ok=True)
    data = Path(task["dataset_kwargs"]["data_files"]["test"])
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    path = folder / f"{task['task']}.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def run_task(lm, task_yaml: Path, *, chat: bool = False, limit: int | None = None) -> tuple[float, list[dict]]:
    """Run one local task; returns (metric as a fraction, per-item records)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    try:
        spec = safe_yaml.load_file(task_yaml)
        name = spec["task"]
        kind = spec["output_type"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise TaskError(f"{task_yaml}: not a valid task file ({type(e).__name__}: {e})") from e
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    tm = TaskManager(include_path=str(task_yaml.parent), include_defaults=False)
    if name not in tm.all_tasks:
        raise TaskError(f"{task_yaml}: lm-eval did not load task {name!r} from it (check its fields)")
    try:
        res = simple_evaluate(model=lm, tasks=[name], task_manager=tm, limit=limit, num_fewshot=0,
                              apply_chat_template=chat, log_samples=True, bootstrap_iters=0,
                              random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    except Exception as e:  # lm-eval raises bare exceptions for bad YAML fields or data
        raise TaskError(f"{task_yaml}: lm-eval failed on task {name!r}: {type(e).__name__}: {e}") from e
    key = "acc,none" if kind == "multiple_choice" else "exact_match,flexible-extract"
    value = res["results"][name][key]
    records = []
    for s in res["samples"][name]:
        rec = {"doc_id": s["doc_id"], "row": s["doc"].get("row"), "target": s["target"]}
        if kind == "multiple_choice":
            rec["loglikelihoods"] = [float(r[0]) for r in s["filtered_resps"]]
            rec["correct"] = bool(s["acc"])
        else:
            rec["response"] = s["resps"][0][0]
            rec["extracted"] = s["filtered_resps"][0]
            rec["correct"] = bool(s["exact_match"])
        records.append(rec)
    return float(value), records


def hflm(model, tok, batch_size: int = 8, device: str = "cpu"):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, device=device)
