"""Issue 14, attacker's view of ingestion: one poison file never blocks the batch, nothing is read
through a symlink or staged outside its folder, a huge line is refused with bounded memory, every
fault names file, line and field, and the ingest ledger remembers each file's outcome."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignment.dataset import build_dataset
from alignment.validate import validate_file
from h3ops.config import load_config
from h3ops.pipeline import run_step
from tests.pipeline_helpers import ROOT, tiny_config

DIM = "honesty"


def row(i: int, **extra) -> dict:
    return {"prompt": f"Question {i}?", "chosen": f"True answer {i}.", "rejected": f"False answer {i}.",
            "dimension": DIM, "source": "test", **extra}


def jsonl(rows: list) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def _parquet_bytes(tmp: Path) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([row(900)]), tmp / "real.parquet")
    data = (tmp / "real.parquet").read_bytes()
    return data[:40] + b"\x00garbage\xff" * 50 + data[-8:]  # footer intact, pages broken


# name -> (bytes, the line the fault must name, a word the fault must contain)
POISON = {
    "deep.jsonl": (lambda t: jsonl([row(100), b'{"meta": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"]), 2, "nested"),
    "surrogate.jsonl": (lambda t: jsonl([row(101), b'{"prompt": "bad \\ud800 text", "chosen": "a", "rejected": "b"}']),
                        2, "surrogate"),
    "utf16.jsonl": (lambda t: jsonl([row(102)]).decode().encode("utf-16"), 1, "UTF-16"),
    "bigint.jsonl": (lambda t: jsonl([b'{"prompt": "p", "chosen": "a", "rejected": "b", "meta": {"n": '
                                      + b"9" * 5000 + b"}}"]), 1, "digits"),
    "corrupt.parquet": (_parquet_bytes, 0, "parquet"),
}


@pytest.mark.parametrize("name", sorted(POISON))
def test_one_poison_file_is_quarantined_and_the_batch_proceeds(tmp_path, name):
    make, line, word = POISON[name]
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.jsonl").write_bytes(jsonl([row(i) for i in range(5)]))
    (src / name).write_bytes(make(tmp_path))
    ref = build_dataset([src], tmp_path / "ds", dimension=DIM, eval_holdout=0)
    assert ref.rows == 5, "the good file's rows all reach the dataset"
    assert len(ref.quarantined) == 1 and ref.quarantined[0].endswith(name)
    report = json.loads(Path(ref.quarantined[0] + ".report.json").read_text())
    assert report["path"].endswith(name)
    faults = report["faults"]
    assert faults and all(f["field"] for f in faults), faults
    assert any(f["line"] == line and word.lower() in (f["field"] + f["reason"]).lower() for f in faults), faults


def test_surrogate_is_invalid_at_validate_naming_line_and_field(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_bytes(jsonl([row(1), b'{"prompt": "p", "chosen": "ok \\udc00", "rejected": "b"}']))
    rep = validate_file(f, dimension=DIM)
    assert not rep.ok
    assert [(x.line, x.field) for x in rep.faults] == [(2, "chosen")], rep.faults


def test_utf16_and_huge_integer_get_accurate_errors(tmp_path):
    (tmp_path / "u.jsonl").write_bytes(jsonl([row(1), row(2)]).decode().encode("utf-16"))
    rep = validate_file(tmp_path / "u.jsonl", dimension=DIM)
    assert "UTF-16" in rep.summary() and "first row is not a JSON object" not in rep.summary()
    (tmp_path / "i.jsonl").write_bytes(jsonl([row(1), b'{"prompt": ' + b"1" * 5000 + b"}"]))
    rep = validate_file(tmp_path / "i.jsonl", dimension=DIM)
    assert [f.line for f in rep.faults] == [2] and "digits" in rep.faults[0].reason
    assert len(rep.rows) == 1


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_never_reach_train_jsonl(tmp_path, constant):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_bytes(jsonl([row(1), b'{"prompt": "p", "chosen": "a", "rejected": "b", '
                                                 b'"dimension": "honesty", "meta": {"score": ' + constant.encode() + b"}}"]))
    ref = build_dataset([src], tmp_path / "ds", dimension=DIM, eval_holdout=0, policy="drop")

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    for line in (tmp_path / "ds" / "train.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse)
    report = json.loads((tmp_path / "ds" / "report.json").read_text())[0]
    assert ref.rows == 1 and [(f["line"], f["field"]) for f in report["faults"]] == [(2, "meta.score")]


def test_symlinks_in_a_source_folder_are_refused_and_never_copied(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.jsonl").write_bytes(jsonl([row(i) for i in range(3)]))
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(jsonl([row(i) for i in range(50, 53)]))
    (src / "link-out.jsonl").symlink_to(outside)
    (src / "passwd.jsonl").symlink_to("/etc/passwd")
    linked_dir = tmp_path / "linked"
    linked_dir.mkdir()
    (linked_dir / "inside.jsonl").write_bytes(jsonl([row(i) for i in range(70, 73)]))
    (src / "dir.jsonl").symlink_to(linked_dir)  # a link to a folder, named like a file
    (src / "sub").symlink_to(linked_dir)  # and a linked folder
    qdir = tmp_path / "q"
    ref = build_dataset([src], tmp_path / "ds", dimension=DIM, eval_holdout=0, quarantine_dir=qdir)
    assert ref.rows == 3, "nothing read through a link"
    copied = [p for p in qdir.rglob("*") if p.is_file() and not p.name.endswith(".json")] if qdir.exists() else []
    assert copied == [], "no link target copied into quarantine"
    passwd = Path("/etc/passwd").read_bytes()[:30]
    assert not any(passwd in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink())
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    refused = {Path(r["path"]).name: r["faults"] for r in report if r["faults"]}
    assert set(refused) == {"link-out.jsonl", "passwd.jsonl", "dir.jsonl"}
    assert all("symbolic link" in f[0]["reason"] for f in refused.values())


_MEASURE = """
import json, re, sys
from alignment.sources import read_records

def peak_kb():  # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the pytest parent
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))

path, cap = sys.argv[1], int(sys.argv[2])
before = peak_kb()
recs = [(r.line, r.fault) for r in read_records(path, max_line_bytes=cap)]
after = peak_kb()
print(json.dumps({"grown_kb": after - before, "records": recs}))
"""


def test_a_huge_line_is_refused_by_a_per_line_cap_with_bounded_memory(tmp_path):
    f = tmp_path / "huge.jsonl"
    with open(f, "wb") as out:
        out.write(json.dumps(row(1)).encode() + b"\n")
        out.write(b'{"prompt": "' + b"x" * (40 << 20) + b'"}\n')  # one 40 MB line
        out.write(json.dumps(row(2)).encode() + b"\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", _MEASURE, str(f), str(1 << 20)], capture_output=True, text=True,
                         env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    faults = [(line, fault) for line, fault in out["records"] if fault]
    assert [r[0] for r in out["records"]] == [1, 2, 3]
    assert len(faults) == 1 and faults[0][0] == 2 and "longer than" in faults[0][1]
    assert out["grown_kb"] < 12 * 1024, f"reading a 40 MB line grew RSS by {out['grown_kb']} KB"


# --- the ingest step: per-file ledger, S3 staging -------------------------------------------------

def _ledger(cfg) -> dict:
    from h3ops.steps.ingest import file_ledger
    return file_ledger(cfg, DIM)


def test_ingest_isolates_poison_files_and_ledger_skips_them_until_they_change(tmp_path):
    cfg = load_config(tiny_config(tmp_path, dims=(DIM,)))
    landing = tmp_path / "landing" / DIM
    landing.mkdir(parents=True)
    (landing / "bad-first.jsonl").write_bytes(jsonl([row(1), b"{not json"]))  # quarantined before the crash
    (landing / "deep.jsonl").write_bytes(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    (landing / "good.jsonl").write_bytes(jsonl([row(i) for i in range(4)]))
    out = run_step("ingest", cfg, {"dimension": DIM})
    assert out["new"] is True and out["rows"] + out["eval_rows"] == 4
    ledger = _ledger(cfg)
    outcomes = {Path(k).name: v["outcome"] for k, v in ledger.items()}
    assert outcomes == {"bad-first.jsonl": "quarantined", "deep.jsonl": "quarantined", "good.jsonl": "ingested"}
    assert all(v["digest"].startswith("sha256:") for v in ledger.values())
    # A rerun processes nothing again: the quarantined files are not retried, the dataset is the same.
    again = run_step("ingest", cfg, {"dimension": DIM})
    assert again["processed"] == [] and again["new"] is False and again["digest"] == out["digest"]
    from h3ops.steps.ingest import new_files
    assert new_files(cfg, DIM) == []
    # A fixed file (new content digest): the sensor notices it, ingest retries it, its rows join.
    (landing / "deep.jsonl").write_bytes(jsonl([row(10)]))
    assert [Path(p).name for p in new_files(cfg, DIM)] == ["deep.jsonl"]
    fixed = run_step("ingest", cfg, {"dimension": DIM})
    assert [Path(p).name for p in fixed["processed"]] == ["deep.jsonl"]
    assert fixed["new"] is True and fixed["rows"] + fixed["eval_rows"] == 5
    assert {Path(k).name: v["outcome"] for k, v in _ledger(cfg).items()}["deep.jsonl"] == "ingested"
    # Touched but unchanged: seen once by the sensor, then settled without reprocessing.
    os.utime(landing / "bad-first.jsonl", ns=(1, 1))
    assert [Path(p).name for p in new_files(cfg, DIM)] == ["bad-first.jsonl"]
    assert run_step("ingest", cfg, {"dimension": DIM})["processed"] == []
    assert new_files(cfg, DIM) == []


def test_local_landing_symlink_is_refused_by_ingest(tmp_path):
    cfg = load_config(tiny_config(tmp_path, dims=(DIM,)))
    landing = tmp_path / "landing" / DIM
    landing.mkdir(parents=True)
    (landing / "good.jsonl").write_bytes(jsonl([row(i) for i in range(3)]))
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_bytes(jsonl([row(i) for i in range(60, 64)]))
    (landing / "link.jsonl").symlink_to(outside)
    (landing / "dir.jsonl").symlink_to(tmp_path)  # a linked folder named like a file
    out = run_step("ingest", cfg, {"dimension": DIM})
    assert out["rows"] + out["eval_rows"] == 3
    outcomes = {Path(k).name: v["outcome"] for k, v in _ledger(cfg).items()}
    assert outcomes == {"good.jsonl": "ingested", "link.jsonl": "refused", "dir.jsonl": "refused"}


def _s3_cfg(tmp_path, s3_server, prefix):
    cfg = load_config(tiny_config(tmp_path, dims=(DIM,)))
    return cfg.with_overrides({"dimensions": [{"name": DIM, "landing": f"s3://{s3_server.bucket}/{prefix}"}]})


def test_s3_keys_with_one_basename_both_reach_the_dataset(tmp_path, s3_server):
    from tests.fixtures.servers import unique

    prefix = unique("land-")
    client = s3_server.client()
    client.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/teamA/batch.jsonl", Body=jsonl([row(1), row(2)]))
    client.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/teamB/batch.jsonl", Body=jsonl([row(3), row(4)]))
    cfg = _s3_cfg(tmp_path, s3_server, prefix)
    out = run_step("ingest", cfg, {"dimension": DIM, "s3_client": client})
    assert out["rows"] + out["eval_rows"] == 4, "both teams' rows reach the dataset"
    staged = [p for p in (tmp_path / "work" / "landing").rglob("*") if p.is_file()]
    assert len(staged) == 2


@pytest.mark.parametrize("key", ["landing/../../../../outside.jsonl", "../outside.jsonl", "a/./../b.jsonl",
                                 "/abs.jsonl"])
def test_hostile_s3_keys_are_confined_to_the_staging_folder(tmp_path, s3_server, key):
    from h3ops.steps.storage import fetch

    staging = tmp_path / "a" / "b" / "c" / "d" / "staging"
    uri = f"s3://{s3_server.bucket}/{key}"
    with pytest.raises(ValueError, match="refused"):
        fetch(uri, staging, client=s3_server.client())
    from alignment.sources import staged_path
    with pytest.raises(ValueError, match="refused"):
        staged_path(staging, uri)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_s3_burst_with_poison_and_colliding_keys_lands_every_good_row_once(tmp_path, s3_server):
    """The issue's stack scenario through the ingest step against a real S3 server (rclone)."""
    from tests.fixtures.servers import unique

    prefix = unique("burst-")
    client = s3_server.client()
    for team in ("teamA", "teamB", "teamC"):
        for b in range(3):
            rows = [row(1000 * ord(team[-1]) + 10 * b + k) for k in range(3)]
            client.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/{team}/batch{b}.jsonl", Body=jsonl(rows))
    poison = {"deep": b"[" * 100_000 + b"]" * 100_000 + b"\n",
              "surrogate": b'{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}\n',
              "utf16": jsonl([row(5)]).decode().encode("utf-16"),
              "nan": b'{"prompt": "p", "chosen": "a", "rejected": "b", "meta": {"s": NaN}}\n'}
    for name, body in poison.items():
        client.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/teamA/{name}.jsonl", Body=body)
    cfg = _s3_cfg(tmp_path, s3_server, prefix)
    out = run_step("ingest", cfg, {"dimension": DIM, "s3_client": client})
    ds = Path(out["uri"])
    ids = [json.loads(x)["id"] for f in ("train.jsonl", "eval.jsonl") for x in (ds / f).read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 27
    assert len(out["quarantined"]) == 4
    staged = {p: p.stat().st_mtime_ns for p in (tmp_path / "work" / "landing").rglob("*") if p.is_file()}
    assert len(staged) == 13  # 9 good + 4 poison objects, each under its own name
    again = run_step("ingest", cfg, {"dimension": DIM, "s3_client": client})
    assert again["processed"] == [] and again["digest"] == out["digest"] and again["new"] is False
    assert {p: p.stat().st_mtime_ns for p in staged} == staged, "a rerun downloads nothing again"
    # The sender fixes one poison object: a new ETag, so it is fetched and retried; its rows join once.
    client.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/teamA/utf16.jsonl", Body=jsonl([row(7), row(65000)]))
    fixed = run_step("ingest", cfg, {"dimension": DIM, "s3_client": client})
    assert fixed["processed"] == [f"s3://{s3_server.bucket}/{prefix}/teamA/utf16.jsonl"] and fixed["new"] is True
    assert fixed["rows"] + fixed["eval_rows"] == 28  # row(7) is new; row(65000) is teamA/batch0's, kept once


def test_preference_ingest_dag_survives_a_poison_burst(tmp_path, h3ops_dagbag):
    """Airflow's dag.test(): a burst with poison files and a link still emits the dimension's event,
    every good row lands once, and the sensor then finds nothing new (nothing retried)."""
    from tests.test_e2e_loop import _asset_events, _states

    cfg_path = tiny_config(tmp_path, dims=(DIM,))
    landing = tmp_path / "landing" / DIM
    landing.mkdir(parents=True)
    for b in range(3):
        (landing / f"good{b}.jsonl").write_bytes(jsonl([row(10 * b + k) for k in range(3)]))
    (landing / "deep.jsonl").write_bytes(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    (landing / "surrogate.jsonl").write_bytes(b'{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}\n')
    (landing / "utf16.jsonl").write_bytes(jsonl([row(99)]).decode().encode("utf-16"))
    (landing / "passwd.jsonl").symlink_to("/etc/passwd")
    dag = h3ops_dagbag.dags["preference_ingest"]
    dr = dag.test(run_conf={"config": str(cfg_path)})
    assert str(dr.state) in ("success", "DagRunState.SUCCESS"), _states(dr)
    events = {e["asset"]: e for e in _asset_events(dr.run_id)}
    assert sorted(events) == ["h3ops.preferences", f"h3ops.preferences.{DIM}"]
    assert list(events["h3ops.preferences"]["dimensions"]) == [DIM]
    ds = Path(events[f"h3ops.preferences.{DIM}"]["uri"])
    ids = [json.loads(x)["id"] for f in ("train.jsonl", "eval.jsonl") for x in (ds / f).read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 9
    outcomes = sorted(v["outcome"] for v in _ledger(load_config(cfg_path)).values())
    assert outcomes == ["ingested"] * 3 + ["quarantined"] * 3 + ["refused"]
    from plugins.sensors import find_new_files
    assert find_new_files(str(cfg_path)) == {}, "the sensor sees nothing to retry"


def test_an_object_gone_between_listing_and_fetch_does_not_stop_the_batch(tmp_path, s3_server):
    from tests.fixtures.servers import unique

    prefix = unique("gone-")
    client = s3_server.client()
    client.put_object(Bucket=s3_server.bucket, Key=f"{prefix}/a.jsonl", Body=jsonl([row(1), row(2)]))
    cfg = _s3_cfg(tmp_path, s3_server, prefix)
    gone = f"s3://{s3_server.bucket}/{prefix}/deleted-meanwhile.jsonl"
    files = [f"s3://{s3_server.bucket}/{prefix}/a.jsonl", gone]
    out = run_step("ingest", cfg, {"dimension": DIM, "s3_client": client, "files": files})
    assert out["rows"] + out["eval_rows"] == 2 and out["fetch_errors"][0].startswith(gone)
    assert gone not in _ledger(cfg), "not recorded: a later run tries it again"
