"""Reading preference files: local files, folders, and s3:// URIs, record by record.

A record carries its 1-based line (row index for JSON arrays and Parquet) so every fault in a
report points at a place in the file. Undecodable lines become faults, not exceptions: one bad
byte must not hide the other rows' faults. Files are streamed (line by line, Parquet by batch)
with a per-line cap, opened without following symbolic links; a file that cannot be read at all
raises FileFault naming why.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

SUFFIXES = (".jsonl", ".json", ".parquet")
# Far above any valid row (MAX_CHARS of text, escaped): a longer line is refused unread, so a
# 300 MB line costs at most this much memory, not the whole file several times over.
MAX_LINE_BYTES = 4 << 20
# JSON-array files are parsed whole (no streaming JSON parser in the stdlib); bigger ones must be JSONL.
MAX_JSON_ARRAY_BYTES = 64 << 20
_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16",
         b"\xfe\xff": "UTF-16"}


@dataclass
class Record:
    line: int
    data: Any = None
    fault: str | None = None  # why the line could not be read at all


class RefusedKey(ValueError):
    """An S3 key that could name a place outside the staging folder."""


class FileFault(Exception):
    """A whole file that cannot be read (symbolic link, wrong encoding, broken Parquet)."""

    def __init__(self, line: int, field: str, reason: str, *, refused: bool = False):
        super().__init__(f"line {line}: {field}: {reason}")
        self.line, self.field, self.reason, self.refused = line, field, reason, refused


def _open_no_follow(path: Path):
    """Open for reading without following a symbolic link (also closes the check-then-open race)."""
    if path.is_symlink():
        raise FileFault(0, "<file>", "symbolic link refused (never followed, read or copied)", refused=True)
    try:
        return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
    except OSError as e:
        raise FileFault(0, "<file>", f"cannot open ({e.strerror})", refused=path.is_symlink()) from None


def _json_fault(e: Exception) -> str:
    if isinstance(e, RecursionError):
        return "invalid JSON (nested deeper than the parser allows)"
    msg = str(e)
    if "digits" in msg:  # CPython's int-size guard: name it plainly, drop the set_int_max_str_digits hint
        return f"invalid JSON (an integer with too many digits: {msg.split(';')[0]})"
    return f"invalid JSON ({msg[:300]})"


def _parse(text: str) -> Any:
    # NaN/Infinity are accepted here and refused by validation, which can name the field.
    return json.loads(text)


def _check_encoding(head: bytes) -> int:
    """Bytes to skip at the start (a UTF-8 BOM); FileFault for UTF-16/32."""
    for bom, name in _BOMS.items():
        if head.startswith(bom):
            raise FileFault(1, "<file>", f"{name} encoded (byte-order mark); preference files must be UTF-8")
    if b"\x00" in head:
        raise FileFault(1, "<file>", "NUL bytes in the first line: UTF-16/32 without a byte-order mark? "
                                     "preference files must be UTF-8")
    return 3 if head.startswith(b"\xef\xbb\xbf") else 0


def _parquet_records(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    line = 0
    with _open_no_follow(path) as f:
        try:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=256):
                for row in batch.to_pylist():
                    line += 1
                    yield Record(line, row)
        except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a damaged file
            raise FileFault(line, "<file>", f"unreadable Parquet file after {line} rows "
                                            f"({type(e).__name__}: {str(e)[:300]})") from None


def _line_records(f, max_line_bytes: int) -> Iterator[Record]:
    line_no = 0
    while True:
        line = f.readline(max_line_bytes + 1)
        if not line:
            return
        line_no += 1
        if len(line) > max_line_bytes and not line.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass  # skip the rest of the over-long line without holding it
            yield Record(line_no, fault=f"line longer than {max_line_bytes} bytes (the per-line cap); not read")
            continue
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Record(line_no, fault=f"not valid UTF-8 ({e.reason} at byte {e.start})")
            continue
        try:
            yield Record(line_no, _parse(text))
        except (ValueError, RecursionError) as e:
            yield Record(line_no, fault=_json_fault(e))


def read_records(path: str | Path, *, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[Record]:
    """Records of one file, streamed; FileFault when the file as a whole cannot be read."""
    path = Path(path)
    if path.suffix == ".parquet":
        yield from _parquet_records(path)
        return
    with _open_no_follow(path) as f:
        head = f.read(4096)
        skip = _check_encoding(head.split(b"\n", 1)[0])
        f.seek(skip)
        if path.suffix == ".json" and head[skip:].lstrip()[:1] == b"[":
            size = os.fstat(f.fileno()).st_size
            if size > MAX_JSON_ARRAY_BYTES:
                raise FileFault(1, "<file>", f"JSON array of {size} bytes is over {MAX_JSON_ARRAY_BYTES}; "
                                             "write large files as JSONL (one row per line)")
            raw = f.read()
            try:
                rows = _parse(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield Record(1, fault=f"not valid UTF-8 ({e.reason} at byte {e.start})")
                return
            except (ValueError, RecursionError) as e:
                yield Record(1, fault=_json_fault(e))
                return
            for i, row in enumerate(rows, start=1):
                yield Record(i, row)
            return
        yield from _line_records(f, max_line_bytes)


def staged_path(staging: Path, uri: str) -> Path:
    """Where an s3:// object is staged: named from the whole key (teamA/x and teamB/x differ),
    always directly inside `staging`. Keys with '.', '..' or empty segments are refused."""
    key = uri[len("s3://"):].partition("/")[2]
    segments = key.split("/")
    if not key or any(seg in ("", ".", "..") for seg in segments) or "\\" in key or "\x00" in key:
        raise RefusedKey(f"{uri}: S3 key refused (empty, '.' or '..' path segments could escape the staging folder)")
    base = re.sub(r"[^A-Za-z0-9._-]", "_", segments[-1]).lstrip(".") or "object"
    return staging / f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}-{base}"


def expand_local(source: str | Path) -> list[Path]:
    """A file, or every preference file under a folder (sorted, so builds are reproducible)."""
    p = Path(source)
    if p.is_symlink():
        return [p]  # refused by read_records, never followed (also not into a linked folder)
    if p.is_dir():
        # Links are listed too (rglob never descends into linked folders) so they are refused with a
        # report instead of silently skipped or followed.
        files = sorted(f for f in p.rglob("*") if (f.is_symlink() or f.is_file()) and f.suffix in SUFFIXES
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not files:
            raise FileNotFoundError(f"{p}: folder holds no {'/'.join(SUFFIXES)} files")
        return files
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such preference file or folder")
    if p.suffix not in SUFFIXES:
        raise ValueError(f"{p}: unsupported file type {p.suffix!r} (expected {', '.join(SUFFIXES)})")
    return [p]


def fetch_s3(uri: str, into: Path) -> list[tuple[str, Path | None]]:
    """Download s3://bucket/key or every preference object under s3://bucket/prefix/."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{uri}: not an s3://bucket/key URI")
    from h3ops import s3

    client = s3.client()
    keys = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=key):
        keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(SUFFIXES)]
    if not keys:
        raise FileNotFoundError(f"{uri}: no {'/'.join(SUFFIXES)} objects found")
    out: list[tuple[str, Path | None]] = []
    into.mkdir(parents=True, exist_ok=True)
    for k in sorted(keys):
        name = f"s3://{bucket}/{k}"
        try:
            local = staged_path(into, name)
        except RefusedKey:
            out.append((name, None))  # refused, reported by the builder
            continue
        client.download_file(bucket, k, str(local))
        out.append((name, local))
    return out


def resolve(sources: list[str | Path], workdir: Path | None = None) -> list[tuple[str, Path | None]]:
    """Each source as (name for reports, local file; None for an object refused before download)."""
    out: list[tuple[str, Path | None]] = []
    for s in sources:
        if str(s).startswith("s3://"):
            workdir = workdir or Path(tempfile.mkdtemp(prefix="h3ops-s3-"))
            out += fetch_s3(str(s), workdir)
        else:
            out += [(str(f), f) for f in expand_local(s)]
    return out
