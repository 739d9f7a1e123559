"""The `h3ops` command line as a user meets it: version, suggestions, exit codes, pipes, mergekit flags."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from merging import MergeConfigError, merge
from merging.io import parse_size

ROOT = Path(__file__).resolve().parents[1]


def h3ops(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "h3ops.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120, **kw)


def test_version_and_unknown_command_suggestion():
    from h3ops import __version__

    r = h3ops("--version")
    assert (r.returncode, r.stdout.strip()) == (0, f"h3ops {__version__}")
    r = h3ops("merj")
    assert r.returncode == 2
    assert "unknown command 'merj' (did you mean 'merge'?)" in r.stderr
    assert "exit codes: 0 ok, 1 a check failed, 2 usage or input error" in h3ops("--help").stdout


def test_closed_pipe_is_not_a_traceback():
    # The reader goes away after one line (`h3ops --help | head -1`).
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.argv=['h3ops', '--help']\n"
                          "from h3ops.cli import main\nimport h3ops.cli as c\n"
                          "c._usage = lambda: 'x\\n' * 200000\nsys.exit(main())"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err


@pytest.mark.parametrize("text,expected", [
    ("5B", 5_000_000_000),  # mergekit's --out-shard-size 5B: five billion, not five bytes
    ("500M", 500_000_000), ("2K", 2_000), ("2GB", 2_000_000_000), ("1GiB", 1 << 30), ("1234", 1234),
])
def test_shard_sizes_read_as_mergekit_reads_them(text, expected):
    assert parse_size(text) == expected


def test_mergekit_flags_accepted_or_refused_by_name(tiny_base, tiny_candidates, tmp_path):
    cfg = tmp_path / "ta.yaml"
    cfg.write_text(yaml.safe_dump({"merge_method": "task_arithmetic", "base_model": str(tiny_base),
                                   "models": [{"model": str(c)} for c in tiny_candidates]}))
    out = tmp_path / "out"
    r = h3ops("merge", str(cfg), str(out), "--out-shard-size", "5B", "--lazy-unpickle", "--copy-tokenizer",
              "--random-seed", "3", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "--lazy-unpickle has no effect" in r.stderr
    assert (out / "model.safetensors").is_file(), "5B is one shard, not one file per tensor"
    assert not (out / "model.safetensors.index.json").exists()
    r = h3ops("merge", str(cfg), str(tmp_path / "o2"), "--allow-crimes")
    assert r.returncode == 2 and "--allow-crimes: h3ops refuses mismatched architectures" in r.stderr
    r = h3ops("merge", str(cfg), str(tmp_path / "o3"), "--overwrit")
    assert r.returncode == 2 and "did you mean '--overwrite'?" in r.stderr
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_output_has_model_card_and_mergekit_config(tiny_base, tiny_candidates, tmp_path):
    raw = {"merge_method": "ties", "base_model": str(tiny_base),
           "models": [{"model": str(c), "parameters": {"density": 0.5, "weight": 1.0}} for c in tiny_candidates],
           "parameters": {"normalize": True}}
    out = merge(raw, tmp_path / "m", seed=4, progress=False)
    assert yaml.safe_load((out / "mergekit_config.yml").read_text()) == raw
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "`ties` method" in card and "seed 4" in card
    for c in tiny_candidates:
        assert f"`{c}`" in card
    # The config it wrote reruns to the same weights.
    again = merge(str(out / "mergekit_config.yml"), tmp_path / "again", seed=4, progress=False)
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


@pytest.mark.parametrize("edit,message", [
    (lambda c: {**c, "modules": {"decoder": {"models": c["models"]}}},
     "`modules` is a mergekit feature h3ops does not support yet"),
    (lambda c: {**c, "merge_method": "ram"}, "merge_method 'ram' is a mergekit method h3ops does not support yet"),
    (lambda c: {**c, "merge_method": "tiez"}, "unknown merge_method 'tiez' (did you mean 'ties'?)"),
    (lambda c: {**c, "parameters": {"densty": 0.5}}, "unknown parameter(s) ['densty'] (did you mean 'density'?)"),
    (lambda c: {**c, "models": [{"model": m["model"], "layer_range": [0, 2]} for m in c["models"]]},
     "models[0]: layer_range belongs to a source under 'slices'"),
])
def test_unsupported_mergekit_features_are_named(tiny_base, tiny_candidates, tmp_path, edit, message):
    cfg = edit({"merge_method": "ties", "base_model": str(tiny_base),
                "models": [{"model": str(c), "parameters": {"density": 0.5}} for c in tiny_candidates]})
    with pytest.raises(MergeConfigError) as e:
        merge(cfg, tmp_path / "out", progress=False)
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()


HELP_COMMANDS = [["data"], ["data", "validate"], ["data", "build"], ["train", "dpo"], ["continual"], ["mixture"],
                 ["merge"], ["diagnose"], ["eval"], ["score"], ["gate"], ["register"], ["versions"], ["compare"],
                 ["promote"], ["rollback"], ["step"], ["demo"], ["up"], ["status"], ["serve"], ["config"]]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=" ".join)
def test_every_help_has_an_example_and_its_defaults(command, capsys):
    from h3ops.cli import COMMANDS, main

    assert command[0] in COMMANDS
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "\nexample:\n  h3ops " in text, text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_defaults_are_shown(capsys):
    from h3ops.cli import main

    with pytest.raises(SystemExit):
        main(["merge", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 2GB)" in text and "(default: cpu)" in text and "(default: 0)" in text


def test_json_results(tiny_base, tiny_candidates, tmp_path):
    import json

    cfg = tmp_path / "ta.yaml"
    cfg.write_text(yaml.safe_dump({"merge_method": "linear", "models": [{"model": str(c)} for c in tiny_candidates]}))
    r = h3ops("merge", str(cfg), str(tmp_path / "m"), "--json", "--no-progress")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["method"] == "linear" and [p["uri"] for p in out["parents"]] == [str(c) for c in tiny_candidates]
    r = h3ops("status", "--home", str(tmp_path / "nostack"), "--json")
    rows = json.loads(r.stdout)
    assert r.returncode == 1 and rows and not any(row["running"] for row in rows)  # a stopped stack: a failed check
