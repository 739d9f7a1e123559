"""Registration keeps the registry honest (issue 12, items 5-7), against a real `mlflow server`.

Item 5: the idempotency key never returns a version holding other content.
Item 6: a merged checkpoint's h3ops.json names the registry URIs it was merged from.
Item 7: a folder that is not plain data is refused before anything is uploaded; every uploaded
file is covered by the content digest.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from h3ops.checkpoint import CheckpointError, read_manifest
from h3ops.digest import digest_dir
from registry.api import Registry, RegistryError
from registry.cli import main as cli
from tests.fixtures.servers import unique
from tests.test_checkpoint_safety import ATTACKS, HEADER_FAULTS, _rewrite_header

pytestmark = pytest.mark.slow  # a real MLflow server process


def _nothing_registered(reg: Registry, project: str) -> None:
    assert reg.client.search_registered_models(f"name LIKE '{project}%'") == []
    exp = reg.client.get_experiment_by_name(f"h3ops/{project}/registry")
    assert exp is None or reg.client.search_runs([exp.experiment_id]) == [], "something was uploaded"


def _uploaded(reg: Registry, run_id: str, path: str = "checkpoint") -> set[str]:
    out = set()
    for a in reg.client.list_artifacts(run_id, path):
        out |= _uploaded(reg, run_id, a.path) if a.is_dir else {a.path.removeprefix("checkpoint/")}
    return out


# --- item 5 ---------------------------------------------------------------------------------------------

def test_same_manifest_other_weights_is_refused_not_answered_with_the_old_version(mlflow_sqlite, tiny_candidates,
                                                                                   tmp_path):
    """Old code: the second folder got the first folder's version back (its weights were never uploaded)."""
    reg = Registry(mlflow_sqlite.url)
    project = unique("idem")
    first = shutil.copytree(tiny_candidates[0], tmp_path / "first")
    second = shutil.copytree(tiny_candidates[0], tmp_path / "second")
    shutil.copy(tiny_candidates[1] / "model.safetensors", second / "model.safetensors")
    assert (first / "h3ops.json").read_bytes() == (second / "h3ops.json").read_bytes()
    assert digest_dir(first) != digest_dir(second)

    ref = reg.register_checkpoint(first, project=project, kind="candidate")
    assert ref.tags["h3ops.content_digest"] == digest_dir(first)
    with pytest.raises(RegistryError, match=rf"{ref.uri}.*same inputs.*different content") as e:
        reg.register_checkpoint(second, project=project, kind="candidate")
    assert str(second) in str(e.value) and digest_dir(second) in str(e.value)
    assert [r.uri for r in reg.versions(project, "candidate")] == [ref.uri]
    runs = reg.client.search_runs([reg.experiment_id(f"h3ops/{project}/registry")])
    assert [r.data.tags["h3ops.content_digest"] for r in runs] == [digest_dir(first)], "the second was uploaded"
    # The key itself names the content: the same folder again is still the same version.
    again = reg.register_checkpoint(first, project=project, kind="candidate")
    assert again.uri == ref.uri and again.idempotency_key == ref.idempotency_key
    # Other inputs with the second folder's content are a different checkpoint: registered.
    other = reg.register_checkpoint(second, project=project, kind="candidate", data_digest="sha256:other-data")
    assert other.uri != ref.uri and other.tags["h3ops.content_digest"] == digest_dir(second)


# --- item 7 ---------------------------------------------------------------------------------------------

def _nan_weights(folder: Path, tmp: Path) -> str:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "model.safetensors")
    w = tensors["model.layers.1.self_attn.q_proj.weight"].clone()
    w[2, 7] = float("inf")
    save_file({**tensors, "model.layers.1.self_attn.q_proj.weight": w}, folder / "model.safetensors",
              metadata={"format": "pt"})
    return "model.layers.1.self_attn.q_proj.weight"


def _bf16_nan(folder: Path, tmp: Path) -> str:
    import torch
    from safetensors.torch import load_file, save_file

    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(folder / "model.safetensors").items()}
    tensors["model.norm.weight"][5] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return "model.norm.weight"


REGISTRATION_ATTACKS = {**ATTACKS, "nan_weights": _nan_weights, "bf16_nan": _bf16_nan}


@pytest.mark.parametrize("attack", sorted(REGISTRATION_ATTACKS))
def test_registration_refuses_unsafe_folder_and_uploads_nothing(attack, mlflow_sqlite, tiny_candidates, tmp_path):
    reg = Registry(mlflow_sqlite.url)
    project = unique("unsafe")
    bad = shutil.copytree(tiny_candidates[0], tmp_path / "m" / "bad")
    name = REGISTRATION_ATTACKS[attack](bad, tmp_path)
    with pytest.raises(CheckpointError) as e:
        reg.register_checkpoint(bad, project=project, kind="candidate")
    assert "\n" not in str(e.value) and str(bad) in str(e.value) and name in str(e.value), str(e.value)
    _nothing_registered(reg, project)


@pytest.mark.parametrize("fault", ["size_disagrees_with_offsets", "missing_key", "list_header"])
def test_registration_refuses_malformed_header(fault, mlflow_sqlite, tiny_candidates, tmp_path, capsys):
    reg = Registry(mlflow_sqlite.url)
    project = unique("hdr")
    bad = shutil.copytree(tiny_candidates[0], tmp_path / "bad")
    edit, pattern = HEADER_FAULTS[fault]
    _rewrite_header(bad / "model.safetensors", edit)
    with pytest.raises(CheckpointError, match=pattern):
        reg.register_checkpoint(bad, project=project, kind="candidate")
    assert cli(["register", str(bad), "--project", project, "--kind", "candidate",
                "--tracking-uri", mlflow_sqlite.url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("h3ops register: error:") and str(bad / "model.safetensors") in err[-1]
    _nothing_registered(reg, project)


def test_remote_code_registers_only_with_the_flag(mlflow_sqlite, tiny_candidates, tmp_path, capsys):
    reg = Registry(mlflow_sqlite.url)
    project = unique("code")
    folder = shutil.copytree(tiny_candidates[0], tmp_path / "coded")
    ATTACKS["auto_map"](folder, tmp_path)
    args = [str(folder), "--project", project, "--kind", "candidate", "--tracking-uri", mlflow_sqlite.url]
    assert cli(["register", *args]) == 2
    assert "--allow-remote-code" in capsys.readouterr().err
    _nothing_registered(reg, project)
    assert cli(["register", *args, "--allow-remote-code"]) == 0
    ref = reg.resolve(json.loads(capsys.readouterr().out)["uri"])
    assert "modeling_evil.py" in _uploaded(reg, ref.run_id)
    assert ref.tags["h3ops.content_digest"] == digest_dir(folder)


def test_every_uploaded_file_is_covered_by_the_digest(mlflow_sqlite, tiny_candidates, tmp_path):
    """Old code: hidden files were uploaded but not digested (a download could not tell they changed)."""
    reg = Registry(mlflow_sqlite.url)
    project = unique("hidden")
    folder = shutil.copytree(tiny_candidates[0], tmp_path / "f")
    (folder / ".env").write_text("HF_TOKEN=hf_secret\n")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "notes.txt").write_text("local only\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "extra.json").write_text("{}\n")
    ref = reg.register_checkpoint(folder, project=project, kind="candidate")
    uploaded = _uploaded(reg, ref.run_id)
    assert not any(p.startswith(".") or "/." in p for p in uploaded), uploaded
    metadata = {"h3ops.json"}  # described by the version's tags, not part of the content
    from h3ops.digest import content_files

    assert uploaded - metadata == {p.relative_to(folder).as_posix() for p in content_files(folder)}
    assert "sub/extra.json" in uploaded
    out = reg.download(ref.uri, tmp_path / "dl")
    assert digest_dir(out) == ref.tags["h3ops.content_digest"] == digest_dir(folder)


# --- item 6 ---------------------------------------------------------------------------------------------

def test_merged_manifest_names_the_registry_uris(tmp_path, tiny_base, tiny_candidates):
    """Old code: h3ops.json's parents were the download cache's folders, the tags the models:/ URIs."""
    from h3ops.config import load_config
    from h3ops.pipeline import run_step
    from tests.pipeline_helpers import tiny_config

    cfg = load_config(tiny_config(tmp_path))
    uris = [run_step("register", cfg, {"path": str(c), "kind": "candidate", "dimension": d,
                                        "parents": [str(tiny_base)], "base": str(tiny_base)})["uri"]
            for c, d in zip(tiny_candidates, ("helpfulness", "honesty", "harmlessness"))]
    merged = run_step("merge", cfg, {"base": str(tiny_base), "candidates": uris})
    manifest = read_manifest(merged["path"])
    assert [p["uri"] for p in manifest.parents] == [str(tiny_base), *uris]
    assert [p["digest"] for p in manifest.parents] == [digest_dir(tiny_base), *map(digest_dir, tiny_candidates)]
    assert "downloads" not in json.dumps(manifest.settings), "a download-cache path leaked into h3ops.json"
    ref = run_step("register", cfg, {"path": merged["path"], "kind": "merged", "parents": merged["parents"],
                                     "method": merged["method"], "base": str(tiny_base)})
    from h3ops.steps.common import registry

    tags = registry(cfg).resolve(ref["uri"]).tags
    tagged = json.loads(tags["h3ops.parents"])
    assert [p["uri"] for p in tagged] == uris
    by_uri = {p["uri"]: p["digest"] for p in manifest.parents}
    assert all(by_uri[p["uri"]] == p["digest"] for p in tagged), "tags and h3ops.json disagree"
