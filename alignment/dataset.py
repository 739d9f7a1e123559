"""Building a dataset: validate every source file, quarantine bad ones, write the rest with a digest.

Layout of a dataset folder:
  train.jsonl      canonical rows, sorted by id (so the same content always gives the same bytes)
  eval.jsonl       the held-out rows (a fixed hash of the id decides, not a random draw)
  dataset.json     dimension, digest, counts, sources, quarantined files
  report.json      the validation report of every source
The digest covers train.jsonl and eval.jsonl only, so it names the data, not where it came from.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alignment.schema import check_dimension
from alignment.sources import resolve
from alignment.validate import MAX_CHARS, ValidationReport, validate_path
from h3ops.checkpoint import atomic_output_dir
from h3ops.digest import digest_bytes

POLICIES = ("quarantine", "drop")


class DatasetError(ValueError):
    """Preference data that cannot be used; the message names the file or the mismatch."""

    def __init__(self, message: str, files: list[dict] | None = None):
        super().__init__(message)
        self.files = files or []  # each source's outcome, as in DatasetRef.files


@dataclass
class DatasetRef:
    uri: str
    digest: str
    dimension: str
    rows: int
    eval_rows: int
    rejected: int
    report: str
    quarantined: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    # One entry per source: {"path", "outcome": ingested | quarantined | refused, "rows", "rejected"}
    files: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _jsonl(rows: list[dict]) -> bytes:
    # allow_nan=False: train.jsonl is standard JSON whatever slipped past validation.
    return b"".join(json.dumps(r, sort_keys=True, ensure_ascii=False, allow_nan=False).encode() + b"\n"
                    for r in rows)


def content_digest(train: list[dict], evals: list[dict]) -> str:
    return digest_bytes(_jsonl(train) + b"--eval--\n" + _jsonl(evals))


def _held_out(row_id: str, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


def _quarantine(name: str, local: Path, report: ValidationReport, qdir: Path) -> Path:
    qdir.mkdir(parents=True, exist_ok=True)
    stem = hashlib.sha256(name.encode()).hexdigest()[:8] + "-" + local.name
    shutil.copy2(local, qdir / stem, follow_symlinks=False)  # links are refused before this; never follow
    (qdir / f"{stem}.report.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return qdir / stem


def build_dataset(sources: list[str | Path], out_dir: str | Path, *, dimension: str,
                  quarantine_dir: str | Path | None = None, eval_holdout: float = 0.05,
                  policy: str = "quarantine", format: str | None = None, max_chars: int = MAX_CHARS,
                  overwrite: bool = False, names: dict[str, str] | None = None,
                  provenance: dict | None = None) -> DatasetRef:
    """Validate `sources` (files, folders, s3:// URIs) and write one dataset of `dimension`.

    policy "quarantine": a file with any bad row is set aside whole with its report and none of
    its rows are used. policy "drop": bad rows are left out and listed in the report.
    Each file is validated on its own: any failure reading one (broken encoding, nesting, Parquet)
    is that file's fault in its report, and the other files proceed. Symbolic links and refused S3
    keys are never read nor copied. `names` maps a local path to the name reports use (its URI).
    Zero valid rows is an error and writes nothing. Rebuilding the same content into an existing
    folder returns it unchanged.
    """
    check_dimension(dimension)
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")
    if not 0.0 <= eval_holdout < 1.0:
        raise ValueError(f"eval_holdout must be in [0, 1), got {eval_holdout}")
    if not sources:
        raise DatasetError("no sources given")
    out_dir = Path(out_dir)
    qdir = Path(quarantine_dir) if quarantine_dir else out_dir.parent / f"{out_dir.name}.quarantine"
    reports, rows, quarantined, refused, files, seen = [], [], [], [], [], set()
    for name, local in resolve(list(sources)):
        name = (names or {}).get(str(local), name)
        rep = validate_path(local, name=name, dimension=dimension, format=format, max_chars=max_chars)
        reports.append(rep)
        outcome = "ingested"
        if rep.refused:
            refused.append(name)
            outcome = "refused"
        elif not rep.ok and (policy == "quarantine" or not rep.rows):
            quarantined.append(str(_quarantine(name, local, rep, qdir)))
            outcome = "quarantined"
        files.append({"path": name, "outcome": outcome, "rows": len(rep.rows) if outcome == "ingested" else 0,
                      "rejected": rep.rejected})
        if outcome != "ingested":
            continue
        for r in rep.rows:  # the same pair in two files is one row
            if r["id"] not in seen:
                seen.add(r["id"])
                rows.append(r)
    rejected = sum(r.rejected for r in reports)
    if not rows:
        details = "\n".join(r.summary() for r in reports)
        raise DatasetError(f"no valid {dimension} rows in {', '.join(map(str, sources))}; nothing written"
                           + (f" (quarantined into {qdir})" if quarantined else "") + f"\n{details}", files)
    rows.sort(key=lambda r: r["id"])
    evals = [r for r in rows if _held_out(r["id"], eval_holdout)]
    train = [r for r in rows if not _held_out(r["id"], eval_holdout)]
    if not train:
        train, evals = rows, []
    digest = content_digest(train, evals)
    meta = {"dimension": dimension, "digest": digest, "rows": len(train), "eval_rows": len(evals),
            "rejected": rejected, "policy": policy, "eval_holdout": eval_holdout,
            "sources": [r.path for r in reports], "quarantined": quarantined, "refused": refused}
    if provenance is not None:  # how the rows were made (a mixture's method, scorer, inputs)
        meta["provenance"] = provenance
    ref = DatasetRef(uri=str(out_dir), digest=digest, dimension=dimension, rows=len(train),
                     eval_rows=len(evals), rejected=rejected, report=str(out_dir / "report.json"),
                     quarantined=quarantined, refused=refused, files=files)
    if (out_dir / "dataset.json").is_file() and not overwrite:
        existing = json.loads((out_dir / "dataset.json").read_text())
        if existing.get("digest") == digest and existing.get("provenance") == meta.get("provenance"):
            return ref
        if existing.get("digest") == digest:
            raise FileExistsError(f"{out_dir}: holds the same rows made another way ({existing.get('provenance')}); "
                                  "pass overwrite=True to replace it")
        raise FileExistsError(f"{out_dir}: holds a different dataset ({existing.get('digest')}); "
                              "pass overwrite=True to replace it")
    with atomic_output_dir(out_dir, overwrite=True) as tmp:
        (tmp / "train.jsonl").write_bytes(_jsonl(train))
        (tmp / "eval.jsonl").write_bytes(_jsonl(evals))
        (tmp / "report.json").write_text(json.dumps([r.to_dict() for r in reports], indent=2, ensure_ascii=False) + "\n")
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return ref


@dataclass
class LoadedDataset:
    path: str
    dimension: str
    digest: str
    train: list[dict]
    eval: list[dict]


def load_dataset(path: str | Path, *, dimension: str | None = None) -> LoadedDataset:
    """A dataset folder written by build_dataset, or a single canonical JSONL file (validated now).

    `dimension` is the job's: a dataset of another dimension is refused.
    """
    path = Path(path)
    if path.is_dir():
        meta_file = path / "dataset.json"
        if not meta_file.is_file():
            raise DatasetError(f"{path}: not a dataset folder (no dataset.json; build it with `h3ops data build`)")
        meta = json.loads(meta_file.read_text())
        train = [json.loads(x) for x in (path / "train.jsonl").read_text().splitlines() if x.strip()]
        evals = [json.loads(x) for x in (path / "eval.jsonl").read_text().splitlines() if x.strip()]
        digest = content_digest(train, evals)
        if digest != meta["digest"]:
            raise DatasetError(f"{path}: content digest {digest} does not match dataset.json ({meta['digest']}): "
                               "the files were changed after the build")
        ds = LoadedDataset(str(path), meta["dimension"], digest, train, evals)
    elif path.is_file():
        rep = validate_path(path, dimension=dimension)
        if not rep.ok:
            raise DatasetError(f"{path}: invalid preference file\n{rep.summary()}")
        dims = {r["dimension"] for r in rep.rows}
        rows = sorted(rep.rows, key=lambda r: r["id"])
        ds = LoadedDataset(str(path), dims.pop() if len(dims) == 1 else "mixture",
                           content_digest(rows, []), rows, [])
    else:
        raise DatasetError(f"{path}: no such dataset")
    if dimension is not None and ds.dimension != dimension:
        raise DatasetError(f"{path}: dataset dimension {ds.dimension!r} does not match the job's dimension {dimension!r}")
    return ds


def write_rows(rows: list[dict], out_dir: str | Path, *, dimension: str, provenance: dict,
               overwrite: bool = False) -> DatasetRef:
    """Write already-canonical rows (e.g. a mixture's selection) as a dataset, via build_dataset."""
    out_dir = Path(out_dir)
    staging = out_dir.parent / f".{out_dir.name}.rows.jsonl"
    staging.parent.mkdir(parents=True, exist_ok=True)
    unique = list({r["id"]: r for r in rows}.values())  # the same pair from two inputs is one row
    staging.write_bytes(_jsonl(unique))
    try:
        return build_dataset([staging], out_dir, dimension=dimension, eval_holdout=0.0, format="canonical",
                             overwrite=overwrite, provenance=provenance)
    finally:
        staging.unlink(missing_ok=True)
