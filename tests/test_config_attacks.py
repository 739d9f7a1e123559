"""Issue 14, configuration that fails early: the pipeline config checks merge method, parameters and
dtype through the merge engine's own declarations and DPO settings through alignment's (and TRL's, in
`h3ops config check`); every YAML load refuses alias bombs fast and keeps its error short."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from h3ops.config import ConfigError, load_config, validate_config
from tests.pipeline_helpers import ROOT

BASE = {"project": "p", "base_model": "tiny",
        "dimensions": [{"name": "honesty", "landing": "/tmp/x"}, {"name": "helpfulness", "landing": "/tmp/y"}]}


def _error(patch) -> str:
    with pytest.raises(ConfigError) as e:
        validate_config({**BASE, **patch})
    return str(e.value)


def test_the_issues_merge_section_fails_at_load_naming_each_field():
    msg = _error({"merge": {"method": "tiez", "parameters": {"density": -1}, "dtype": "garbage"}})
    assert "merge.method" in msg and "did you mean 'ties'" in msg, msg
    assert "merge.parameters.density" in msg and "merge.dtype" in msg, msg


@pytest.mark.parametrize("merge, field, words", [
    ({"method": "ties", "parameters": {"density": -1}}, "merge.parameters.density", "(0, 1]"),
    ({"method": "ties", "parameters": {"densty": 0.5}}, "merge.parameters.densty", "did you mean 'density'"),
    ({"method": "ties", "parameters": {"density": "half"}}, "merge.parameters.density", "must be float"),
    ({"method": "linear", "dtype": "bf17"}, "merge.dtype", "bfloat16"),
])
def test_merge_parameters_are_checked_by_the_engines_declarations(merge, field, words):
    msg = _error({"merge": merge})
    assert field in msg and words in msg, msg


@pytest.mark.parametrize("dpo, field, words", [
    ({"preset": "cpu-dem"}, "dpo.preset", "did you mean 'cpu-demo'"),
    ({"overrides": {"betta": 0.1}}, "dpo.overrides.betta", "did you mean 'beta'"),
    ({"overrides": {"beta": "high"}}, "dpo.overrides.beta", "float"),
    ({"preset": "test", "overrides": {"batch_size": 3}}, "dpo.overrides", "multiple of"),
])
def test_dpo_preset_and_overrides_are_checked_at_load(dpo, field, words):
    msg = _error({"dpo": dpo})
    assert field in msg and words in msg, msg


def test_evaluation_suite_is_checked_at_load(tmp_path):
    msg = _error({"evaluation": {"suite": "cpu-3hh"}})
    assert "evaluation.suite" in msg and "did you mean 'cpu-3h'" in msg, msg
    bad = tmp_path / "suite.yaml"
    bad.write_text("benchmarks: {}\n")
    assert "evaluation.suite" in _error({"evaluation": {"suite": str(bad)}})


def test_good_configs_still_load():
    for name in ("tiny.yaml", "smollm2.yaml"):
        load_config(ROOT / "examples" / name)
    validate_config({**BASE, "merge": {"method": "ties", "parameters": {"density": 0.5}, "dtype": "bf16"},
                     "dpo": {"preset": "test", "overrides": {"max_steps": 2}}})


def test_config_check_command_runs_trl_too(tmp_path, capsys):
    from h3ops.cli import main

    good = tmp_path / "good.yaml"
    good.write_text((ROOT / "examples" / "tiny.yaml").read_text())
    assert main(["config", "check", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "examples" / "tiny.yaml").read_text()
                   + "\n# TRL refuses this scheduler; alignment's settings do not know it\n")
    import yaml
    data = yaml.safe_load(bad.read_text())
    data.setdefault("dpo", {}).setdefault("overrides", {})["lr_scheduler"] = "cosine_wobbly"
    bad.write_text(yaml.safe_dump(data))
    assert main(["config", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "dpo.overrides.lr_scheduler" in err and "cosine_wobbly" in err, err


BOMB = """a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""

_RUN = """
import re, sys, time
t = time.time()
from h3ops.cli import main
rc = main(sys.argv[1:])
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) pytest parent.
peak = re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)
print("RESULT", rc, round(time.time() - t, 2), peak, flush=True)
"""


FULL_3H_BENCHMARKS = ("math", "gsm8k", "arc_easy", "arc_challenge", "mmlu", "mbpp_plus", "humaneval_plus",
                      "mt_bench", "halueval_wild", "salad_bench", "or_bench")


def _nested(bomb: str, key: str, use: str) -> str:
    """The bomb's anchors under `key`, then `use` (e.g. 'models: *i') to make them count."""
    return f"{key}:\n" + "".join(f"  {line}\n" for line in bomb.splitlines()) + use + "\n"


@pytest.mark.parametrize("argv, text", [
    (["merge", "{f}", "{out}"], "merge_method: ties\nbase_model: .\n" + _nested(BOMB, "parameters", "models: *i")),
    (["config", "check", "{f}"], _nested(BOMB, "x", "project: p\nbase_model: tiny\n"
                                                    "dimensions: [{name: honesty, landing: /l}]\n"
                                                    "merge:\n  method: ties\n  parameters: {density: *i}")),
    (["gate", "{scores}", "--policy", "{f}"], _nested(BOMB, "anchors", "margin: *i")),
])
def test_alias_bomb_fails_fast_small_and_short(tmp_path, argv, text):
    f = tmp_path / "bomb.yaml"
    f.write_text(text)
    assert len(f.read_bytes()) < 700
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({b: 50.0 if b != "mt_bench" else 5.0 for b in FULL_3H_BENCHMARKS}))
    args = [a.format(f=f, out=tmp_path / "out", scores=scores) for a in argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        res = subprocess.run([sys.executable, "-c", _RUN, *args], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the alias bomb ran for over 60 s")
    result = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")]
    assert result, res.stderr[-1500:]
    _, rc, secs, rss_kb = result[0].split()
    assert int(rc) != 0
    assert float(secs) < 5 and int(rss_kb) < 400 * 1024, result
    assert len(res.stderr) < 4000 and "alias bomb" in res.stderr, res.stderr[-1500:]
    assert not (tmp_path / "out").exists()


def test_every_yaml_load_goes_through_the_safe_loader():
    """No module outside h3ops/safe_yaml.py calls yaml's loaders itself."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("tests/", ".venv")) or rel == "h3ops/safe_yaml.py":
            continue
        text = path.read_text()
        if any(s in text for s in ("yaml.safe_load(", "yaml.load(", "yaml.full_load(", "yaml.unsafe_load(")):
            offenders.append(rel)
    assert offenders == []


def test_safe_yaml_bounds():
    from h3ops.safe_yaml import YamlError, loads

    assert loads("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}
    start = time.time()
    with pytest.raises(YamlError, match="alias"):
        loads(BOMB)
    assert time.time() - start < 2
    with pytest.raises(YamlError) as e:
        loads("key: [" + "x, " * 200_000 + "\n  : bad")
    assert len(str(e.value)) <= 600


def test_config_load_stays_torch_free_and_still_checks_the_merge(tmp_path):
    """The sensor and triggerer load configs: the merge check runs in a child, cached, not in them."""
    code = ("import sys\nfrom h3ops.config import ConfigError, validate_config\n"
            f"base = {BASE!r}\n"
            "validate_config(base)\n"
            "try:\n    validate_config({**base, 'merge': {'method': 'ties', 'parameters': {'density': -1}}})\n"
            "except ConfigError as e:\n    print('REFUSED', 'merge.parameters.density' in str(e))\n"
            "print('TORCH', 'torch' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "H3OPS_CACHE": str(tmp_path / "cache")}
    for _ in range(2):  # cold cache (child interpreter), then warm (cached answer)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert "REFUSED True" in res.stdout and "TORCH False" in res.stdout, res.stdout + res.stderr[-1500:]
    assert len(list((tmp_path / "cache" / "config-checks").glob("*.json"))) == 2
