"""Validation of preference rows, with a report that names the line and field of every fault.

Rules: the row must be a JSON object decoded from UTF-8; prompt/chosen/rejected present and of the
right type; chosen and rejected non-empty and different; a known dimension that the dataset covers;
the row no longer than `max_chars`; ids unique within the file.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from alignment.adapters import AdapterFault, detect, get_adapter
from alignment.schema import ALL_DIMENSIONS, FIELDS, ROLES, check_dimension, covers, prompt_text, row_id
from alignment.sources import MAX_LINE_BYTES, FileFault, Record, read_records

MAX_CHARS = 32_000  # ~8k tokens: longer than the paper's 4096-token max length, so surely an error
MAX_DEPTH = 64  # nesting in meta: deeper is surely not scores and labels, and strains every encoder


@dataclass
class Fault:
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.reason}"


@dataclass
class ValidationReport:
    path: str
    format: str | None
    dimension: str | None
    total: int = 0
    rows: list[dict] = field(default_factory=list)  # valid canonical rows
    faults: list[Fault] = field(default_factory=list)
    refused: bool = False  # never read (a symbolic link, a refused S3 key): not copied to quarantine

    @property
    def ok(self) -> bool:
        return not self.faults

    @property
    def rejected(self) -> int:
        return len({f.line for f in self.faults})

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "dimension": self.dimension, "total": self.total,
                "valid": len(self.rows), "rejected": self.rejected, "refused": self.refused,
                "faults": [asdict(f) for f in self.faults]}

    def summary(self) -> str:
        head = f"{self.path}: {len(self.rows)} valid, {self.rejected} rejected ({self.format})"
        return "\n".join([head] + [f"  {f}" for f in self.faults])


def _check_prompt(prompt: Any) -> str | None:
    if isinstance(prompt, str):
        return None if prompt.strip() else "empty"
    if isinstance(prompt, list):
        if not prompt:
            return "empty message list"
        for i, m in enumerate(prompt):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                return f"message {i} is not {{role: {'|'.join(ROLES)}, content: str}}"
        return None
    return f"wrong type {type(prompt).__name__} (expected string or list of chat messages)"


def _unwritable(row: dict) -> list[tuple[str, str]]:
    """Values train.jsonl could not hold as standard UTF-8 JSON: lone surrogates, NaN/Infinity,
    absurd nesting. Walked without recursion, so any depth the parser produced is safe here."""
    faults = []
    stack = [(key, row[key], 0) for key in reversed(FIELDS) if key in row]
    while stack and len(faults) < 5:
        where, value, depth = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                faults.append((where, f"lone surrogate {value[e.start]!r} at character {e.start}: not encodable as UTF-8"))
        elif isinstance(value, float) and not math.isfinite(value):
            faults.append((where, f"{value} is not standard JSON (NaN/Infinity)"))
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                faults.append((where, f"nested deeper than {MAX_DEPTH} levels"))
                continue
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in reversed(list(items)):
                if isinstance(value, dict) and isinstance(k, str):
                    try:
                        k.encode("utf-8")
                    except UnicodeEncodeError:
                        faults.append((where, "a key holds a lone surrogate: not encodable as UTF-8"))
                        continue
                stack.append((f"{where}.{k}" if isinstance(value, dict) else f"{where}[{k}]", v, depth + 1))
    return faults


def check_row(row: Any, *, dimension: str | None, max_chars: int = MAX_CHARS) -> list[tuple[str, str]]:
    """(field, reason) for every rule the canonical row breaks; fills in its defaults in place."""
    if not isinstance(row, dict):
        return [("<row>", "not a JSON object")]
    faults = _unwritable(row)
    if faults:
        return faults
    for key in ("prompt", "chosen", "rejected"):
        if key not in row or row[key] is None:
            faults.append((key, "missing"))
    if "prompt" in row and row["prompt"] is not None and (why := _check_prompt(row["prompt"])):
        faults.append(("prompt", why))
    for key in ("chosen", "rejected"):
        v = row.get(key)
        if v is None:
            continue
        if not isinstance(v, str):
            faults.append((key, f"wrong type {type(v).__name__} (expected string)"))
        elif not v.strip():
            faults.append((key, "empty"))
    c, r = row.get("chosen"), row.get("rejected")
    if isinstance(c, str) and isinstance(r, str) and c.strip() and c.strip() == r.strip():
        faults.append(("chosen/rejected", "identical answers carry no preference"))
    dim = row.get("dimension") or dimension
    if dim is not None and dim not in ALL_DIMENSIONS:
        faults.append(("dimension", f"unknown {dim!r} (expected one of {', '.join(ALL_DIMENSIONS)})"))
    elif dim is not None and dimension is not None and not covers(dimension, dim):
        faults.append(("dimension", f"{dim!r} does not match the dataset's dimension {dimension!r}"))
    for key, kind in (("id", str), ("source", str), ("meta", dict)):
        if row.get(key) is not None and not isinstance(row[key], kind):
            faults.append((key, f"wrong type {type(row[key]).__name__} (expected {kind.__name__})"))
    if not faults:
        size = len(prompt_text(row["prompt"])) + len(c) + len(r)
        if size > max_chars:
            faults.append(("<row>", f"over-long: {size} characters > max {max_chars}"))
    if not faults:
        row["dimension"] = dim
        row.setdefault("id", None)
        row["id"] = row["id"] or row_id(row["prompt"], c, r)
    return faults


def validate_records(records: Iterable[Record], *, path: str, dimension: str | None = None,
                     format: str | None = None, max_chars: int = MAX_CHARS) -> ValidationReport:
    if dimension is not None:
        check_dimension(dimension)
    report = ValidationReport(path=path, format=format, dimension=dimension)
    # Stream: hold only the leading unreadable records until the first readable one picks the layout.
    records = iter(records)
    head: list[Record] = []
    for rec in records:
        head.append(rec)
        if rec.fault is None:
            break
    if not head:
        report.faults.append(Fault(0, "<file>", "no rows"))
        return report
    if head[-1].fault is not None and not format:  # nothing readable: the lines' own faults say why
        report.total = len(head)
        report.faults += [Fault(r.line, "<line>", r.fault) for r in head]
        return report
    try:
        adapter = get_adapter(format) if format else detect(head[-1].data)
    except AdapterFault as f:
        report.faults.append(Fault(head[-1].line, f.field, f.reason))
        return report
    records = _counted(itertools.chain(head, records), report)
    report.format = adapter.name
    seen: dict[str, int] = {}
    source = Path(path).name
    for line, row, fault in adapter.convert(records):
        if fault is not None:
            report.faults.append(Fault(line, fault.field, fault.reason))
            continue
        if isinstance(row, dict):
            row = {k: v for k, v in row.items() if v is not None}
            if adapter.dimension and "dimension" not in row:
                row["dimension"] = adapter.dimension
            row.setdefault("source", source)
        problems = check_row(row, dimension=dimension, max_chars=max_chars)
        if not problems and row["id"] in seen:
            problems = [("id", f"duplicate of line {seen[row['id']]} ({row['id']})")]
        if problems:
            report.faults += [Fault(line, fld, why) for fld, why in problems]
            continue
        seen[row["id"]] = line
        report.rows.append({k: row[k] for k in ("id", "prompt", "chosen", "rejected", "dimension", "source", "meta")
                            if k in row})
    return report


def _counted(records: Iterable[Record], report: ValidationReport) -> Iterator[Record]:
    for rec in records:
        report.total += 1
        yield rec


class _Tracked:
    """Records, remembering the line last handed out (where an unexpected failure happened)."""

    def __init__(self, records: Iterable[Record]):
        self.records, self.line = iter(records), 0

    def __iter__(self):
        for rec in self.records:
            self.line = rec.line
            yield rec


def validate_path(local: str | Path | None, *, name: str | None = None, dimension: str | None = None,
                  format: str | None = None, max_chars: int = MAX_CHARS,
                  max_line_bytes: int = MAX_LINE_BYTES, refused: str | None = None) -> ValidationReport:
    """Validate one file, isolated: any failure becomes a fault of this file's report (file, line,
    field), never an exception that would stop the other files of a batch."""
    name = name or str(local)
    if dimension is not None:  # the caller's mistakes are raised, not blamed on the file
        check_dimension(dimension)
    if format is not None:
        get_adapter(format)
    if local is None or refused:
        rep = ValidationReport(path=name, format=format, dimension=dimension, refused=True)
        rep.faults.append(Fault(0, "<file>", refused or "refused before reading (an S3 key with '.', '..' or "
                                                         "empty path segments could escape the staging folder)"))
        return rep
    tracked = _Tracked(read_records(local, max_line_bytes=max_line_bytes))
    try:
        return validate_records(tracked, path=name, dimension=dimension, format=format, max_chars=max_chars)
    except FileFault as f:
        rep = ValidationReport(path=name, format=format, dimension=dimension, refused=f.refused)
        rep.faults.append(Fault(f.line, f.field, f.reason))
    except Exception as e:  # noqa: BLE001 - one poison file must never abort the batch
        rep = ValidationReport(path=name, format=format, dimension=dimension)
        reason = f"{type(e).__name__}: {str(e)[:300]}" if not isinstance(e, RecursionError) else \
            "RecursionError: nested deeper than Python can process"
        rep.faults.append(Fault(tracked.line, "<file>", f"unexpected failure reading this file ({reason})"))
    return rep


def validate_file(path: str | Path, *, dimension: str | None = None, format: str | None = None,
                  max_chars: int = MAX_CHARS) -> ValidationReport:
    """Validate one preference file (any supported layout) against `dimension`."""
    return validate_path(path, dimension=dimension, format=format, max_chars=max_chars)


def write_report(report: ValidationReport, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return path
