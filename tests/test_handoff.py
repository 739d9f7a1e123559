"""Tasks that share no disk hand datasets to each other by s3:// URI and content digest.

Two "workers" are two working directories (nothing shared but the S3 store on loopback, a real
rclone server): one ingests, the other plans and fetches what it was handed, verified by digest
and cached by it.
"""
from __future__ import annotations

import pytest

from h3ops.config import load_config
from tests.pipeline_helpers import tiny_config, write_pairs


@pytest.fixture
def two_workers(tmp_path, s3_server, monkeypatch):
    for var, value in s3_server.env().items():
        monkeypatch.setenv(var, value)
    store = f"s3://{s3_server.bucket}/h3ops-{tmp_path.name}"
    landing = tmp_path / "landing"
    a = load_config(tiny_config(tmp_path / "a", project="handoff", store=store,
                                dimensions=[{"name": "honesty", "landing": str(landing / "honesty")}]))
    b = a.with_overrides({"workdir": str(tmp_path / "b" / "work")})
    write_pairs(landing / "honesty", "honesty")
    return a, b, store


def test_a_dataset_ingested_on_one_worker_is_found_and_fetched_on_another(two_workers, s3_server):
    from alignment.dataset import load_dataset
    from h3ops.pipeline import run_step
    from h3ops.steps.handoff import dataset_local

    a, b, store = two_workers
    ingested = run_step("ingest", a, {"dimension": "honesty"})
    assert ingested["new"] and ingested["uri"].startswith(f"{store}/datasets/honesty/")
    found = run_step("datasets", b, {})  # worker b has never seen the landing folder nor a's disk
    assert [(d["uri"], d["digest"]) for d in found] == [(ingested["uri"], ingested["digest"])]
    local = dataset_local(b, found[0])
    assert str(local).startswith(b.workdir) and load_dataset(local).digest == ingested["digest"]
    # Cached by digest: a second task on the same worker reads no S3 object.
    bucket, prefix = store.removeprefix("s3://").split("/", 1)
    s3_server.client().delete_object(Bucket=bucket, Key=f"{ingested['uri'].split('/', 3)[3]}/train.jsonl")
    assert dataset_local(b, found[0]) == local
    # The file ledger travels too: worker b does not ingest the same file again as new.
    again = run_step("ingest", b.with_overrides({"dimensions": [{"name": "honesty", "landing": a.dimension("honesty").landing}]}),
                     {"dimension": "honesty"})
    assert again["new"] is False and again["processed"] == []


def test_a_dataset_whose_content_is_not_the_handed_digest_is_refused(two_workers, s3_server):
    from alignment.dataset import DatasetError
    from h3ops.pipeline import run_step
    from h3ops.steps.handoff import dataset_local

    a, b, _ = two_workers
    ingested = run_step("ingest", a, {"dimension": "honesty"})
    with pytest.raises(DatasetError, match="not the digest the task was handed"):
        dataset_local(b, {**ingested, "digest": "sha256:" + "0" * 64})
    key = ingested["uri"].split("/", 3)[3]
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=f"{key}/train.jsonl", Body=b"{}\n")
    with pytest.raises(DatasetError, match="digest"):
        dataset_local(b, ingested)
    cache = b.work / "cache" / "datasets"
    assert not cache.exists() or list(cache.iterdir()) == []  # nothing half-fetched left behind


def test_models_by_s3_or_runs_uri_are_cached_by_content_digest(tmp_path, s3_server, tiny_base, monkeypatch):
    """A model handed as an s3:// or runs:/ URI is fetched once per content, not once per URI:
    cached under its digest when one is known (the caller's, or a registered checkpoint's run tag),
    verified before use; content that is not the handed digest is refused and nothing is kept."""
    from h3ops.checkpoint import CheckpointError
    from h3ops.digest import digest_dir
    from h3ops.steps.common import local_model
    from h3ops.steps.register import register

    for var, value in s3_server.env().items():
        monkeypatch.setenv(var, value)
    cfg = load_config(tiny_config(tmp_path, project="modelcache"))
    client, prefix = s3_server.client(), f"models-{tmp_path.name}"
    for copy in ("a", "b"):  # the same checkpoint under two URIs
        for f in tiny_base.rglob("*"):
            if f.is_file():
                client.upload_file(str(f), s3_server.bucket, f"{prefix}/{copy}/{f.relative_to(tiny_base).as_posix()}")
    uri = {c: f"s3://{s3_server.bucket}/{prefix}/{c}" for c in ("a", "b")}
    digest = digest_dir(tiny_base)
    downloads = cfg.work / "downloads"

    got = local_model(cfg, uri["a"], digest=digest)
    assert got == downloads / digest.split(":")[1] and digest_dir(got) == digest
    # Another URI, same content: nothing is read from S3 (its objects are gone).
    for key in s3_server.keys(f"{prefix}/b/"):
        client.delete_object(Bucket=s3_server.bucket, Key=key)
    assert local_model(cfg, uri["b"], digest=digest) == got
    # Content that is not the handed digest: refused, nothing left in the cache.
    before = sorted(p.name for p in downloads.iterdir())
    with pytest.raises(CheckpointError, match="not the sha256:0+ this task was handed"):
        local_model(cfg, uri["a"], digest="sha256:" + "0" * 64)
    assert sorted(p.name for p in downloads.iterdir()) == before

    # A registered checkpoint's run: its content digest tag keys the copy, so runs:/ and models:/
    # URIs of the same content share one folder (the one above: same weights).
    ref = register(cfg, str(tiny_base), "base")
    run_uri = f"runs:/{ref['run_id']}/checkpoint"
    assert local_model(cfg, run_uri) == local_model(cfg, ref["uri"]) == got
    fresh = cfg.with_overrides({"workdir": str(tmp_path / "other-worker")})  # downloads it from the run
    fetched = local_model(fresh, run_uri)
    assert fetched.name == digest.split(":")[1] and digest_dir(fetched) == digest
    with pytest.raises(CheckpointError, match="this task was handed"):
        local_model(cfg, run_uri, digest="sha256:" + "1" * 64)
