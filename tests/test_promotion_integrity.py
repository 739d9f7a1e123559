"""Promotion integrity (issue 12, items 1-4): the gate's guarantee holds end to end, tried as an
attacker would. Real `mlflow server` (SQLite), tiny real checkpoints, the real CLIs and steps.

Each test reproduces one hole: a gate passing with no continual reference, the DAG and the CLI
choosing different continual references, cached scores keyed by suite name (a changed
`evaluation.limit` made the gate raise), scores logged for a version that were measured on other
content, and a hand-edited or foreign decision file accepted by `h3ops promote`.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.gate import GateError, GatePolicy, decide
from h3ops.config import ConfigError, load_config, validate_config
from h3ops.digest import digest_dir
from h3ops.pipeline import run_step
from h3ops.testing import make_candidate
from registry.api import Registry
from registry.cli import main as registry_cli
from tests.pipeline_helpers import ROOT, tiny_config
from tests.test_scoring_gate import row

H1, O1, H2, O2 = ("sha256:" + c * 64 for c in "1234")


# --- item 1 and the policy bounds: pure functions ---------------------------------------------------

def test_no_continual_reference_is_no_pass():
    prod = row("5", "Llama3-8B-Instruct")
    d = decide(row("5", "TSVM"), prod, [])
    assert not d.passed
    (rule,) = [r for r in d.rules if r.name == "beats_continual"]
    assert not rule.passed and "no continual" in rule.detail
    # Turning the requirement off is an explicit, unsafe policy choice.
    with pytest.raises(GateError, match="require_continual"):
        GatePolicy(require_continual=False)
    lax = GatePolicy(require_continual=False, allow_unsafe_policy=True)
    assert decide(row("5", "TSVM"), prod, [], lax).passed


@pytest.mark.parametrize("field, value", [("margin", -1e9), ("margin", -0.5), ("max_regression", 100.5)])
def test_policy_bounds_refused_unless_unsafe_allowed(field, value):
    with pytest.raises(GateError, match=field):
        GatePolicy(**{field: value})
    with pytest.raises(ConfigError, match=f"gate.{field}"):
        validate_config({"project": "p", "base_model": "tiny", "dimensions": [{"name": "honesty", "landing": "/l"}],
                         "gate": {field: value}})
    pol = GatePolicy(**{field: value, "allow_unsafe_policy": True})
    assert getattr(pol, field) == value
    cfg = validate_config({"project": "p", "base_model": "tiny", "dimensions": [{"name": "honesty", "landing": "/l"}],
                           "gate": {field: value, "allow_unsafe_policy": True}})
    assert getattr(cfg.gate, field) == value


def test_negative_margin_would_pass_a_19_point_regression():
    """The issue's example: margin -1e9 (and a lax max_regression) passes a far worse model."""
    worse = {k: v - 19.0 if k != "mt_bench" else v for k, v in row("5", "Llama3-8B-Instruct").items()}
    with pytest.raises(GateError, match="margin"):
        decide(worse, row("5", "Llama3-8B-Instruct"), [row("5", "Continual DPO Training Stage1")],
               {"margin": -1e9, "max_regression": 100})


# --- a project on a real registry ---------------------------------------------------------------------

def _chosen_scores(reg, cfg, uri: str, value: float) -> str:
    """An evaluation run with chosen metrics (every suite benchmark at `value`), as if measured with
    the config's evaluation settings; returns the scores' suite digest."""
    from evaluation.runner import plan
    from evaluation.scoring import aggregate, get_suite

    ev = cfg.evaluation
    run_digest = plan(ev.suite, ev.limit, ev.judge)[2]  # also registers the YAML suite for scoring
    metrics = {k: value for k in get_suite(ev.suite).keys}
    scores = aggregate(metrics, ev.suite, run_digest=run_digest)
    reg.log_evaluation(uri, metrics, scores, scores.suite_digest)
    return scores.suite_digest


class Project:
    """Tiny checkpoints registered with real lineage: candidates, merges, continual sequences."""

    def __init__(self, tmp: Path, base: Path, url: str, **cfg_overrides):
        self.tmp, self.base, self.base_digest = tmp, base, digest_dir(base)
        self.cfg_path = tiny_config(tmp, tracking_uri=url, dims=("helpfulness", "honesty"), **cfg_overrides)
        self.cfg = load_config(self.cfg_path)
        self.reg = Registry(url)
        self.seed = 100

    def folder(self, parent: Path | None = None) -> Path:
        self.seed += 1
        return make_candidate(parent or self.base, self.tmp / f"ck{self.seed}", seed=self.seed)

    def register(self, folder: Path, kind: str, parents=(), **kw) -> str:
        return self.reg.register_checkpoint(folder, project=self.cfg.project, kind=kind, parents=list(parents),
                                            base_digest=self.base_digest, **kw).uri

    def parent(self, uri: str) -> dict:
        return {"uri": uri, "digest": self.reg.resolve(uri).tags["h3ops.content_digest"]}

    def merged(self, data: dict[str, str]) -> str:
        """A merge of one registered candidate per dimension (trained on `data[dimension]`)."""
        cands = [self.register(self.folder(), "candidate", dimension=d, data_digest=dd) for d, dd in data.items()]
        return self.register(self.folder(), "merged", [self.parent(c) for c in cands], method="r_tsvm",
                             config_digest=f"sha256:{self.seed:064d}")

    def continual(self, data: dict[str, str]) -> list[str]:
        uris, folder, parents = [], None, [{"digest": self.base_digest}]
        for i, (d, dd) in enumerate(data.items(), 1):
            folder = self.folder(folder)
            uris.append(self.register(folder, "continual", parents, dimension=d, data_digest=dd,
                                      method=f"continual-dpo-stage{i}"))
            parents = [self.parent(uris[-1])]
        return uris

    def cli(self, *args: str) -> int:
        return registry_cli([args[0], "--project", self.cfg.project, "--tracking-uri", self.reg.tracking_uri,
                             *args[1:]])


@pytest.fixture
def project(tmp_path, tiny_base, mlflow_sqlite):
    return Project(tmp_path, tiny_base, mlflow_sqlite.url)


# --- item 2: one way to choose the references --------------------------------------------------------

def test_dag_and_cli_compare_with_the_continual_sequence_of_the_same_data(project, capsys):
    p = project
    cand = p.merged({"helpfulness": H1, "honesty": O1})
    same = p.continual({"helpfulness": H1, "honesty": O1})      # the baseline for the candidate's data
    other = p.continual({"helpfulness": H2, "honesty": O2})     # newer, trained on other data
    for uri, value in [(cand, 50.0)] + [(u, 80.0) for u in same] + [(u, 10.0) for u in other]:
        _chosen_scores(p.reg, p.cfg, uri, value)

    decision = run_step("gate", p.cfg, {"candidate_uri": cand})
    assert decision["continual"] == same, decision["continual"]
    assert decision["passed"] is False
    assert p.cli("promote", "--candidate", cand) == 1
    out = capsys.readouterr().out
    assert "best continual 80.00 (stage 1 of 2)" in out, out
    assert p.reg.production(p.cfg.project) is None


def test_dag_gate_fails_without_continual_reference(project):
    p = project
    cand = p.merged({"helpfulness": H1, "honesty": O1})
    _chosen_scores(p.reg, p.cfg, cand, 50.0)
    p.continual({"helpfulness": H2, "honesty": O2})  # a baseline for other data only
    decision = run_step("gate", p.cfg, {"candidate_uri": cand})
    assert decision["passed"] is False and decision["continual"] == []
    (rule,) = [r for r in decision["rules"] if r["name"] == "beats_continual"]
    assert not rule["passed"] and "no continual" in rule["detail"], rule


# --- item 3: scores belong to content -----------------------------------------------------------------

def test_changing_the_eval_limit_does_not_break_later_gates(project):
    p = project
    cfg2 = load_config(p.cfg_path, {"evaluation": {"limit": 2}})
    prod = p.merged({"helpfulness": H1, "honesty": O1})
    cand = p.merged({"helpfulness": H1, "honesty": O1})
    stages = p.continual({"helpfulness": H1, "honesty": O1})
    run_step("promote_manual", p.cfg, {"model_uri": prod, "reason": "test bootstrap"})
    assert p.reg.production(p.cfg.project).uri == prod
    d1 = _chosen_scores(p.reg, p.cfg, prod, 40.0)
    from h3ops.steps.evaluate import existing_scores
    # Cached scores are those of the suite digest the config measures with, not of the suite's name.
    assert existing_scores(p.cfg, prod)["suite_digest"] == d1
    assert existing_scores(cfg2, prod) is None
    d2 = _chosen_scores(p.reg, cfg2, prod, 40.0)
    for uri, value in [(cand, 60.0)] + [(u, 30.0) for u in stages]:
        _chosen_scores(p.reg, cfg2, uri, value)
    _chosen_scores(p.reg, p.cfg, prod, 40.0)  # production's latest scores are now the limit-1 ones
    assert existing_scores(cfg2, prod)["suite_digest"] == d2
    decision = run_step("gate", cfg2, {"candidate_uri": cand})
    assert decision["passed"] is True and decision["suite_digest"] == d2, decision["summary"]


def test_eval_cli_refuses_a_folder_that_is_not_the_version(project, tmp_path):
    p = project
    folder = p.folder()
    uri = p.register(folder, "merged", method="r_tsvm", config_digest="sha256:" + "e" * 64)
    other = p.folder()
    out = subprocess.run([sys.executable, "-m", "h3ops.cli", "eval", str(other), "--model-version", uri,
                          "--tracking-uri", p.reg.tracking_uri, "--limit", "1",
                          "--cache-dir", str(tmp_path / "cache")],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 2, out.stdout + out.stderr[-3000:]
    assert digest_dir(other) in out.stderr and digest_dir(folder) in out.stderr, out.stderr[-2000:]
    assert p.reg.get_scores(uri) is None
    assert not (tmp_path / "cache").exists()  # refused before evaluating anything


def test_gate_refuses_scores_measured_on_other_content(project):
    """An evaluation run logged for version A whose scores were measured on folder B (what
    `h3ops eval B --model-version A` used to write) is not A's score."""
    from evaluation.scoring import aggregate, get_suite

    p = project
    cand = p.merged({"helpfulness": H1, "honesty": O1})
    for u in p.continual({"helpfulness": H1, "honesty": O1}):
        _chosen_scores(p.reg, p.cfg, u, 10.0)
    from evaluation.runner import plan
    ev = p.cfg.evaluation
    run_digest = plan(ev.suite, ev.limit, ev.judge)[2]
    metrics = {k: 90.0 for k in get_suite(ev.suite).keys}
    scores = aggregate(metrics, ev.suite, run_digest=run_digest)
    ref = p.reg.resolve(cand)
    exp = p.reg.experiment_id(f"h3ops/{p.cfg.project}/evaluations")
    run = p.reg.client.create_run(exp, tags={
        "h3ops.model_uri": cand, "h3ops.suite": scores.suite, "h3ops.suite_digest": scores.suite_digest,
        "h3ops.model_digest": digest_dir(p.folder()), "h3ops.scores": json.dumps(scores.to_dict())})
    p.reg.client.set_terminated(run.info.run_id, "FINISHED")
    for k, v in {"h3ops.eval_run_id": run.info.run_id, "h3ops.suite_digest": scores.suite_digest}.items():
        p.reg.client.set_model_version_tag(ref.name, ref.version, k, v)
    with pytest.raises(Exception, match="no evaluation scores|measured on"):
        run_step("gate", p.cfg, {"candidate_uri": cand})
    assert p.cli("promote", "--candidate", cand) == 2
    assert p.reg.production(p.cfg.project) is None


# --- item 4: a decision cannot be forged --------------------------------------------------------------

@pytest.fixture
def failing(project):
    """A candidate that the gate fails (the continual baseline for its data scores higher)."""
    p = project
    cand = p.merged({"helpfulness": H1, "honesty": O1})
    _chosen_scores(p.reg, p.cfg, cand, 50.0)
    for u in p.continual({"helpfulness": H1, "honesty": O1}):
        _chosen_scores(p.reg, p.cfg, u, 80.0)
    return p, cand


def _write(tmp: Path, name: str, decision: dict) -> str:
    path = tmp / name
    path.write_text(json.dumps(decision))
    return str(path)


def test_forged_decisions_are_refused(failing, tmp_path, capsys):
    p, cand = failing
    # A hand-written pass.
    f = _write(tmp_path, "forged.json", {"passed": True, "candidate": cand, "production": None, "rules": []})
    assert p.cli("promote", "--candidate", cand, "--decision", f) == 2
    err = capsys.readouterr().err
    assert "passed" in err and "refused" in err, err
    # The gate's own record with the verdict flipped.
    genuine = run_step("gate", p.cfg, {"candidate_uri": cand})
    assert genuine["passed"] is False
    flipped = {**genuine, "passed": True,
               "rules": [{**r, "passed": True} for r in genuine["rules"]]}
    assert p.cli("promote", "--candidate", cand, "--decision", _write(tmp_path, "flipped.json", flipped)) == 2
    assert "beats_continual" in capsys.readouterr().err
    # A pass written by `h3ops gate` for other metrics names no candidate.
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps(row("5", "TSVM")))
    stage = tmp_path / "s.json"
    stage.write_text(json.dumps(row("5", "Continual DPO Training Stage1")))
    offline = tmp_path / "offline.json"
    from evaluation.cli import main as eval_cli
    assert eval_cli(["gate", str(metrics), "--continual", str(stage), "--out", str(offline)]) == 0
    assert json.loads(offline.read_text())["candidate"] is None
    assert p.cli("promote", "--candidate", cand, "--decision", str(offline)) == 2
    assert "candidate" in capsys.readouterr().err
    assert p.reg.production(p.cfg.project) is None
    # The genuine failing record is accepted as what it is: a failed gate, nothing moves.
    assert p.cli("promote", "--candidate", cand, "--decision", _write(tmp_path, "genuine.json", genuine)) == 1
    assert p.reg.production(p.cfg.project) is None


def test_force_needs_a_reason_and_is_audited(failing, capsys):
    p, cand = failing
    assert p.cli("promote", "--candidate", cand, "--force") == 2
    assert "--reason" in capsys.readouterr().err
    assert p.reg.production(p.cfg.project) is None
    assert p.cli("promote", "--candidate", cand, "--force", "--reason", "hotfix INC-42", "--by", "ops") == 0
    ref = p.reg.resolve(cand)
    assert p.reg.production(p.cfg.project).uri == cand
    assert ref.tags["h3ops.promoted_action"] == "force-promote"
    assert ref.tags["h3ops.promoted_reason"] == "hotfix INC-42" and ref.tags["h3ops.promoted_by"] == "ops"
    runs = p.reg.client.search_runs([p.reg.experiment_id(f"h3ops/{p.cfg.project}/gate")], "tags.`h3ops.forced` = 'true'")
    assert len(runs) == 1 and runs[0].data.tags["h3ops.model_uri"] == cand
