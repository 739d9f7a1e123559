"""`merge(..., diagnostics=True)` / `h3ops merge --diagnostics`: diagnostics.json inside the merged
checkpoint (atomically with it), the methods' own spectral decisions in it, the printed summary."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from h3ops.checkpoint import weight_files
from h3ops.digest import digest_dir
from merging import merge
from merging.engine import MergeError
from merging.io import CheckpointReader


def _cfg(method, base, cands, **params):
    per_model = {"density": 0.5} if method == "ties" else {}
    return {"merge_method": method, "base_model": str(base),
            "models": [{"model": str(c), "parameters": dict(per_model)} for c in cands], "parameters": params}


def _rows(out: Path) -> tuple[dict, dict[str, dict]]:
    rep = json.loads((out / "diagnostics.json").read_text())
    return rep, {r["name"]: r for r in rep["tensors"]}


@pytest.mark.parametrize("method", ["ties", "r_tsvm"])
def test_merge_writes_diagnostics_with_lineage(method, tiny_base, tiny_candidates, tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="merging.engine")
    out = merge(_cfg(method, tiny_base, tiny_candidates), tmp_path / "out", progress=False, diagnostics=True)
    assert capsys.readouterr().out == ""  # a library logs; stdout is its caller's
    assert "layer type" in caplog.text and "model.layers.*.self_attn.q_proj.weight" in caplog.text
    rep, rows = _rows(out)
    assert rep["kind"] == "h3ops.diagnostics" and rep["method"] == method and rep["settings"]["seed"] == 0
    assert [(i["role"], i["digest"]) for i in rep["inputs"]] == \
        [("base", digest_dir(tiny_base))] + [("candidate", digest_dir(c)) for c in tiny_candidates]
    assert set(rows) == set(CheckpointReader(tiny_base).names())  # every (float) tensor
    q = rows["model.layers.0.self_attn.q_proj.weight"]
    assert len(q["delta_norm"]) == 3 and all(n > 0 for n in q["delta_norm"])
    assert 0.5 < q["sign_conflict"] < 0.9  # independent random task vectors
    assert q["zero_sparsity"] == [0.0, 0.0, 0.0]
    if method == "r_tsvm":  # the method's own decisions, reported through task.state["diagnostics"]
        assert q["method"]["k_l"] == q["k_l"] and q["k_base"] == 64 // 3 and 1 <= q["k_l"] <= q["k_base"]
        assert sum(q["alpha_t"]) == pytest.approx(1.0) and q["sti"] > 0 and q["sti_rel"] > 0
        assert "k_l" in rep["summary"]["model.layers.*.self_attn.q_proj.weight"]
    else:
        assert "method" not in q  # ties reports nothing of its own
    # diagnostics.json is derived data: the content digest is that of the same merge without it.
    plain = merge(_cfg(method, tiny_base, tiny_candidates), tmp_path / "plain", progress=False)
    assert not (plain / "diagnostics.json").exists()
    assert digest_dir(out) == digest_dir(plain)
    assert capsys.readouterr().out == ""  # off: no summary printed


def test_tsvm_reports_its_rank_and_interference(tiny_base, tiny_candidates, tmp_path, capsys):
    out = merge(_cfg("tsvm", tiny_base, tiny_candidates[:2]), tmp_path / "out", progress=False, diagnostics=True)
    _, rows = _rows(out)
    o = rows["model.layers.1.self_attn.o_proj.weight"]
    assert o["k_base"] == o["k_l"] == 32 and o["method"]["sti"] == o["sti"] > 0


def test_failed_merge_with_diagnostics_leaves_nothing(tiny_base, tiny_candidates, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_candidates[1], bad, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    tensors = {}
    for f in weight_files(tiny_candidates[1]):
        tensors.update(load_file(f))
    # The last tensor in name order: diagnostics rows exist for every other tensor when it fails.
    last = sorted(tensors)[-1]
    tensors[last] = tensors[last].clone()
    tensors[last].view(-1)[0] = float("nan")
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    with pytest.raises((MergeError, ValueError), match="non-finite"):
        merge(_cfg("r_tsvm", tiny_base, [tiny_candidates[0], bad]), out, progress=False, diagnostics=True)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad"], "temp folder or report left behind"


def test_cli_flag_prints_the_summary(tiny_base, tiny_candidates, tmp_path, capsys):
    import yaml

    from h3ops.cli import main

    cfg = tmp_path / "m.yaml"
    cfg.write_text(yaml.safe_dump(_cfg("r_tsvm", tiny_base, tiny_candidates[:2])))
    assert main(["merge", str(cfg), str(tmp_path / "out"), "--diagnostics", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("layer type") and "k_l/k_base" in lines[0]
    mlp = next(ln for ln in lines if "mlp.down_proj.weight" in ln)
    assert "/32" in mlp  # k_l/k_base of a 64-wide tensor with two candidates
    assert (tmp_path / "out" / "diagnostics.json").is_file()


def test_pipeline_merge_step_logs_diagnostics_with_the_registered_version(tiny_base, tiny_candidates, tmp_path,
                                                                           capsys):
    from h3ops.config import load_config
    from h3ops.pipeline import run_step
    from h3ops.steps.common import registry
    from tests.pipeline_helpers import tiny_config

    from h3ops.pipeline import main as step_main

    config = tiny_config(tmp_path)
    cfg = load_config(config)
    cands = [str(c) for c in tiny_candidates]
    # `h3ops step merge`: stdout is only the step's JSON result (a worker or a pod parses it); the
    # diagnostics summary goes to the log.
    assert step_main(["merge", "--config", str(config), "--inputs",
                      json.dumps({"base": str(tiny_base), "candidates": cands})]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["diagnostics"] == str(Path(res["path"]) / "diagnostics.json")
    ref = run_step("register", cfg, {"path": res["path"], "kind": "merged", "parents": cands,
                                     "method": res["method"], "base": str(tiny_base)})
    reg = registry(cfg)
    got = reg.resolve(f"models:/{ref['name']}/{ref['version']}")
    assert got.tags["h3ops.diagnostics"] == "checkpoint/diagnostics.json"
    assert reg.client.get_run(ref["run_id"]).data.tags["h3ops.diagnostics"] == "checkpoint/diagnostics.json"
    # It travelled with the checkpoint, and the registered content digest ignores it.
    assert got.tags["h3ops.content_digest"] == digest_dir(res["path"])
    back = reg.download(got, tmp_path / "back")
    rep, rows = _rows(back)
    assert rep["method"] == res["method"] and len(rep["inputs"]) == 4 and rows
