"""The MLflow registry against real `mlflow server` processes (PostgreSQL + S3 on loopback, SQLite).

Every test uses its own project name: the servers are shared by the whole session.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from evaluation.gate import decide
from evaluation.scoring import aggregate
from h3ops.checkpoint import CheckpointError
from h3ops.digest import digest_dir
from registry.api import Registry, RegistryError
from registry.cli import main as cli
from registry.promotion import PromotionConflict
from tests.fixtures.servers import unique, wait_until
from tests.test_scoring_gate import row

# Integration tests on real servers: the first to start a server pays ~10-50 s (more under load).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LINEAGE = ["h3ops.kind", "h3ops.dimension", "h3ops.base_digest", "h3ops.data_digest", "h3ops.config_digest",
           "h3ops.parents", "h3ops.method"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "MLFLOW_REGISTRY"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _register_merged(reg: Registry, folder: Path, project: str, tag: str, metrics: dict | None) -> str:
    ref = reg.register_checkpoint(folder, project=project, kind="merged", method="tsvm",
                                  config_digest=f"sha256:{tag}")
    if metrics is not None:
        s = aggregate(metrics)
        reg.log_evaluation(ref.uri, metrics, s, s.suite_digest)
    return ref.uri


def test_register_lineage_idempotent_on_postgres_and_s3(mlflow_server, tiny_base, tiny_candidates, tmp_path):
    reg = Registry(mlflow_server.url)
    project = unique("p")
    refs = [reg.register_checkpoint(c, project=project, kind="candidate", data_digest=f"sha256:data{i}")
            for i, c in enumerate(tiny_candidates)]
    assert [r.name for r in refs] == [f"{project}-candidates"] * 3
    assert len({r.version for r in refs}) == 3
    v = reg.resolve(refs[1].uri)
    assert all(k in v.tags for k in LINEAGE)
    assert v.tags["h3ops.kind"] == "candidate" and v.tags["h3ops.dimension"] == "honesty"
    assert v.tags["h3ops.base_digest"] == digest_dir(tiny_base)
    assert json.loads(v.tags["h3ops.parents"])[0]["digest"] == digest_dir(tiny_base)
    assert "honesty" in reg.client.get_model_version(v.name, v.version).description
    # Same inputs again: the same version, no new one.
    again = reg.register_checkpoint(tiny_candidates[1], project=project, kind="candidate", data_digest="sha256:data1")
    assert again.uri == refs[1].uri and again.idempotency_key == refs[1].idempotency_key
    assert [r.version for r in reg.versions(project, "candidate")] == [r.version for r in refs]
    # The weights went through the server into the S3 bucket, and come back intact.
    keys = mlflow_server.s3.keys("mlartifacts/")
    assert any(k.endswith(f"{refs[1].run_id}/artifacts/checkpoint/model.safetensors") for k in keys)
    out = reg.download(refs[1].uri, tmp_path / "dl")
    assert digest_dir(out) == digest_dir(tiny_candidates[1])


def test_bad_input_is_refused_before_upload(mlflow_sqlite, tiny_candidates, tmp_path):
    reg = Registry(mlflow_sqlite.url)
    project = unique("bad")
    no_manifest = shutil.copytree(tiny_candidates[0], tmp_path / "nomanifest")
    (no_manifest / "h3ops.json").unlink()
    with pytest.raises(CheckpointError, match="h3ops.json"):
        reg.register_checkpoint(no_manifest, project=project, kind="candidate")
    corrupt = shutil.copytree(tiny_candidates[0], tmp_path / "corrupt")
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        reg.register_checkpoint(corrupt, project=project, kind="candidate")
    with pytest.raises(RegistryError, match="kind"):
        reg.register_checkpoint(tiny_candidates[0], project=project, kind="finetuned")
    assert reg.client.search_registered_models(f"name LIKE '{project}%'") == []
    assert reg.client.get_experiment_by_name(f"h3ops/{project}/registry") is None
    with pytest.raises(RegistryError, match="no such model version"):
        reg.resolve(f"models:/{project}-merged/7")
    with pytest.raises(RegistryError, match="not a model URI"):
        reg.resolve("runs:/abc/model")
    assert cli(["register", str(corrupt), "--project", project, "--kind", "candidate",
                "--tracking-uri", mlflow_sqlite.url]) == 2
    assert reg.versions(project, "candidate") == []


def test_cli_register_and_versions_table(mlflow_sqlite, tiny_candidates, capsys):
    project = unique("cli")
    args = ["--project", project, "--tracking-uri", mlflow_sqlite.url]
    assert cli(["register", str(tiny_candidates[2]), *args, "--kind", "candidate", "--data-digest", "sha256:d",
                "--method", "dpo"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["uri"] == f"models:/{project}-candidates/{out['version']}" and out["idempotency_key"].startswith("sha256:")
    assert cli(["versions", *args, "--kind", "candidate"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["uri", "kind", "dimension", "method"]  # a URI names the version across kinds
    assert table[1].split()[:4] == [out["uri"], "candidate", "harmlessness", "dpo"]


def test_crash_between_upload_and_registration_leaves_nothing_visible(mlflow_sqlite, tiny_candidates):
    project = unique("crash")
    script = ("import os, sys\nfrom registry.api import Registry\nreg = Registry(sys.argv[1])\n"
              "reg.client.create_model_version = lambda *a, **k: os._exit(17)  # die after the upload\n"
              "reg.register_checkpoint(sys.argv[2], project=sys.argv[3], kind='candidate')\n")
    proc = subprocess.run([sys.executable, "-c", script, mlflow_sqlite.url, str(tiny_candidates[2]), project],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 17, proc.stderr[-2000:]
    reg = Registry(mlflow_sqlite.url)
    assert reg.versions(project, "candidate") == []
    assert reg.client.search_model_versions(f"name = '{project}-candidates'") == []
    uploaded = reg.client.search_runs([reg.experiment_id(f"h3ops/{project}/registry")])
    assert len(uploaded) == 1 and uploaded[0].data.tags["h3ops.upload"] == "complete"
    # The retry registers once, reusing the finished upload instead of uploading again.
    ref = reg.register_checkpoint(tiny_candidates[2], project=project, kind="candidate")
    assert ref.run_id == uploaded[0].info.run_id
    assert [r.uri for r in reg.versions(project, "candidate")] == [ref.uri]
    assert reg.register_checkpoint(tiny_candidates[2], project=project, kind="candidate").uri == ref.uri


def test_server_unreachable_gives_clear_error_and_retry_registers_once(mlflow_sqlite, tiny_candidates, monkeypatch):
    from tests.fixtures.servers import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    project = unique("down")
    # Tracking reachable, registry down: the upload side works, registration cannot.
    broken = Registry(mlflow_sqlite.url, registry_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RegistryError, match="unreachable .*retrying is safe"):
        broken.register_checkpoint(tiny_candidates[0], project=project, kind="candidate")
    reg = Registry(mlflow_sqlite.url)
    assert reg.client.search_model_versions(f"name = '{project}-candidates'") == []
    ref = reg.register_checkpoint(tiny_candidates[0], project=project, kind="candidate")
    assert reg.register_checkpoint(tiny_candidates[0], project=project, kind="candidate").uri == ref.uri
    assert [r.uri for r in reg.versions(project, "candidate")] == [ref.uri]


def test_gate_promote_fail_missing_rollback_and_manifests(mlflow_server, tiny_candidates, tmp_path, capsys):
    reg = Registry(mlflow_server.url)
    project = unique("promo")
    base = ["--project", project, "--tracking-uri", mlflow_server.url]
    from h3ops.testing import make_candidate

    ck = tiny_candidates[0]
    # A real continual sequence: each stage trained from the previous one (its parent in h3ops.json).
    stages = [ck]
    for i in (2, 3):
        stages.append(make_candidate(stages[-1], tmp_path / f"stage{i}", seed=10 + i, dimension="helpfulness"))
    for i, folder in enumerate(stages, 1):
        ref = reg.register_checkpoint(folder, project=project, kind="continual", config_digest=f"sha256:stage{i}")
        m = row("5", f"Continual DPO Training Stage{i}")
        reg.log_evaluation(ref.uri, m, aggregate(m), aggregate(m).suite_digest)
    assert [r.version for r in reg.continual_sequence(project)] == ["1", "2", "3"]
    # Scores belong to content: every merged version here is its own checkpoint.
    merges = {t: make_candidate(ck, tmp_path / f"merged-{t}", seed=20 + i)
              for i, t in enumerate(("tsvm", "better", "della", "unscored"))}
    tsvm = _register_merged(reg, merges["tsvm"], project, "tsvm", row("5", "TSVM"))
    better_metrics = {**row("5", "TSVM"), "or_bench": row("5", "TSVM")["or_bench"] + 2.0}
    better = _register_merged(reg, merges["better"], project, "better", better_metrics)
    della = _register_merged(reg, merges["della"], project, "della", row("5", "DELLA Ties"))
    unscored = _register_merged(reg, merges["unscored"], project, "unscored", None)

    # First run: no production, only the continual rule (65.11 > 64.85) → promoted.
    s3_manifest = f"s3://{mlflow_server.s3.bucket}/serving/{project}.json"
    assert reg.production(project) is None
    assert cli(["promote", *base, "--candidate", tsvm]) == 0
    assert "best continual 64.85 (stage 2 of 3)" in capsys.readouterr().out
    assert reg.production(project).uri == tsvm and reg.previous_production(project) is None
    # DELLA-Ties: 64.98 < production's 65.11 → gate fails, nothing moves, the decision is logged.
    assert cli(["promote", *base, "--candidate", della]) == 1
    assert reg.production(project).uri == tsvm
    gate_runs = reg.client.search_runs([reg.experiment_id(f"h3ops/{project}/gate")], "tags.`h3ops.passed` = 'false'")
    assert len(gate_runs) == 1 and "fail" in gate_runs[0].data.tags["h3ops.rule.beats_production"]
    # No scores → a clear error and nothing promoted.
    assert cli(["promote", *base, "--candidate", unscored]) == 2
    assert "no evaluation scores" in capsys.readouterr().err
    assert reg.production(project).uri == tsvm
    # A better candidate passes; the old holder becomes previous-production; serving gets a manifest.
    os.environ.update(mlflow_server.s3.env())
    try:
        assert cli(["promote", *base, "--candidate", better, "--manifest", s3_manifest, "--by", "ops"]) == 0
    finally:
        for k in mlflow_server.s3.env():
            os.environ.pop(k, None)
    assert reg.production(project).uri == better and reg.previous_production(project).uri == tsvm
    body = mlflow_server.s3.client().get_object(Bucket=mlflow_server.s3.bucket, Key=f"serving/{project}.json")
    doc = json.loads(body["Body"].read())
    assert doc["model_uri"] == better and doc["content_digest"] == digest_dir(merges["better"])
    assert doc["scores"]["avg"] == pytest.approx(aggregate(better_metrics).avg)
    assert reg.resolve(better).tags["h3ops.promoted_by"] == "ops"
    # Rollback swaps back; the local manifest follows.
    assert cli(["rollback", *base, "--manifest", str(tmp_path / "serving.json")]) == 0
    assert reg.production(project).uri == tsvm and reg.previous_production(project).uri == better
    assert json.loads((tmp_path / "serving.json").read_text())["model_uri"] == tsvm
    # A decision made against an old production is refused (it moved since the gate ran).
    stale = decide(better_metrics, row("5", "TSVM"), [], versions={"candidate": better, "production": better})
    with pytest.raises(PromotionConflict, match="moved since"):
        reg.promote(project, better, stale)
    capsys.readouterr()
    assert cli(["versions", *base, "--json"]) == 0
    rows = {r["uri"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[tsvm]["aliases"] == ["production"] and rows[tsvm]["avg"] == pytest.approx(65.11, abs=0.01)
    assert rows[unscored]["avg"] is None


PROMOTE = """
import sys, time, pathlib
from registry.api import Registry
from registry.promotion import PromotionConflict
url, project, cand, go = sys.argv[1:5]
reg = Registry(url)
pathlib.Path(go + "." + cand.rsplit("/", 1)[-1]).touch()
while not pathlib.Path(go).exists():
    time.sleep(0.01)
try:  # forced (no scores needed): the race is about moving the alias, which every promotion shares
    print(reg.promote(project, cand, None, force=True, reason="race test").message)
except PromotionConflict as e:
    print("CONFLICT", e)
    sys.exit(3)
"""


def test_concurrent_promotions_exactly_one_wins(mlflow_server, tiny_candidates, tmp_path):
    reg = Registry(mlflow_server.url)
    project = unique("race")
    a = _register_merged(reg, tiny_candidates[0], project, "a", None)
    b = _register_merged(reg, tiny_candidates[1], project, "b", None)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", PROMOTE, mlflow_server.url, project, c, str(go)], cwd=ROOT,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in (a, b)]
    # Release both only once both have imported MLflow and are ready: a real race, not a sequence.
    wait_until(lambda: all((tmp_path / f"go.{c.rsplit('/', 1)[-1]}").exists() for c in (a, b)), "promoters", 180)
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], "\n".join(f"--- rc {p.returncode}\n{o[0][-3000:]}\n{o[1][-6000:]}" for p, o in zip(procs, outs))
    winner = (a, b)[[p.returncode for p in procs].index(0)]
    loser_out = outs[[p.returncode for p in procs].index(3)][0]
    assert "CONFLICT" in loser_out and ("concurrent force-promote" in loser_out or "moved since" in loser_out)
    assert reg.production(project).uri == winner
    assert reg.previous_production(project) is None


@pytest.fixture(scope="module")
def compared(mlflow_sqlite, tiny_candidates):
    reg = Registry(mlflow_sqlite.url)
    project = unique("cmp")
    # Two checkpoints: scores belong to content, so one folder cannot carry two score sets.
    uris = [_register_merged(reg, tiny_candidates[i], project, t, row("5", m))
            for i, (t, m) in enumerate((("ta", "Task Arithmetic"), ("ts", "TSVM")))]
    return reg, project, uris


def test_compare_link_answers_and_shows_scores(compared, mlflow_sqlite, capsys):
    reg, project, uris = compared
    url = reg.compare_url(project)
    assert url.startswith(mlflow_sqlite.url + "/#/compare-model-versions?name=")
    with urllib.request.urlopen(url.split("#")[0], timeout=30) as r:
        assert r.status == 200 and b'<div id="root"' in r.read()
    # The page shows the metrics of each version's run: they must be there.
    for u in uris:
        run = reg.client.get_run(reg.resolve(u).run_id)
        assert {"helpful_avg", "honest_avg", "harmless_avg", "avg", "mt_bench"} <= set(run.data.metrics)
    assert cli(["compare", "--project", project, "--tracking-uri", mlflow_sqlite.url]) == 0
    out = capsys.readouterr().out
    assert "65.11" in out and "64.59" in out and "compare-model-versions" in out and "compare-runs" in out


def test_compare_across_kinds_with_link_plot_and_run(compared, mlflow_sqlite, tiny_candidates, tmp_path, capsys):
    import json as _json

    reg, project, uris = compared
    cand = reg.register_checkpoint(tiny_candidates[2], project=project, kind="candidate", dimension="honesty")
    m = row("5", "Task Arithmetic")
    s = aggregate(m)
    reg.log_evaluation(cand.uri, m, s, s.suite_digest)
    png = tmp_path / "tradeoff.png"
    capsys.readouterr()  # what the registration printed is not the command's output
    assert cli(["compare", "--project", project, "--tracking-uri", mlflow_sqlite.url, "--plot", str(png),
                "--log", "--json"]) == 0
    out = _json.loads(capsys.readouterr().out)
    assert {r["uri"] for r in out["rows"]} == {*uris, cand.uri}
    assert {r["kind"] for r in out["rows"]} == {"merged", "candidate"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The link compares exactly these rows' evaluation runs, and the page answers.
    runs = [r["eval_run_id"] for r in out["rows"]]
    assert all(runs) and all(rid in urllib.parse.unquote(out["mlflow_compare_url"]) for rid in runs)
    with urllib.request.urlopen(out["mlflow_compare_url"].split("#")[0], timeout=30) as r:
        assert r.status == 200
    logged = reg.client.list_artifacts(out["run_id"])
    assert {a.path for a in logged} == {"comparison.json", "3h_tradeoff.png"}
    # Only the candidates when asked: production (a merged version here) is still shown.
    reg.client.set_registered_model_alias(f"{project}-merged", "production", reg.resolve(uris[0]).version)
    capsys.readouterr()
    assert cli(["compare", "--project", project, "--tracking-uri", mlflow_sqlite.url, "--kind", "candidate",
                "--json"]) == 0
    rows = _json.loads(capsys.readouterr().out)["rows"]
    assert [r["uri"] for r in rows] == [cand.uri, uris[0]] and rows[1]["aliases"] == ["production"]


def _page_text(chromium: str, url: str, profile: Path, budget_ms: int) -> str:
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=180)
    text = re.sub(r"<style.*?</style>|<script.*?</script>", " ", proc.stdout, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def test_compare_page_renders_in_headless_chromium(compared, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian package `chromium`); the HTTP check covers the link")
    reg, project, _ = compared
    url = reg.compare_url(project)
    text = ""
    for budget in (15000, 30000, 60000):  # the page fetches runs over REST: allow more time when loaded
        text = _page_text(chromium, url, tmp_path / f"profile-{budget}", budget)
        if "Comparing 2 Versions" in text and "65.11" in text:
            break
    assert "Comparing 2 Versions" in text, text[:2000]
    for metric in ("helpful_avg 56.65 59.61", "honest_avg 51.6 53.8", "harmless_avg 85.52 81.91", "avg 64.59 65.11"):
        assert metric in text, (metric, text[:3000])


def test_scores_per_suite_and_mismatched_digest(mlflow_sqlite, tiny_candidates):
    from evaluation.scoring import FULL_3H

    reg = Registry(mlflow_sqlite.url)
    project = unique("suite")
    uri = _register_merged(reg, tiny_candidates[0], project, "x", row("5", "TSVM"))
    m = row("5", "TSVM")
    x10 = aggregate(m, "full-3h-mt10")
    with pytest.raises(RegistryError, match="suite digest"):
        reg.log_evaluation(uri, m, x10, FULL_3H.digest)
    reg.log_evaluation(uri, m, x10, x10.suite_digest)
    assert reg.get_scores(uri).suite == "full-3h-mt10"  # the latest evaluation
    assert reg.get_scores(uri, FULL_3H.digest).avg == pytest.approx(65.11, abs=0.005)  # an earlier one, by suite
    assert reg.get_scores(uri, "sha256:" + "0" * 64) is None


def test_postgres_url_fixture_gives_a_private_database(postgres_url):
    import psycopg2

    dbname = postgres_url.rsplit("/", 1)[-1]
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname=dbname)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (x int)")
            cur.execute("INSERT INTO t VALUES (1)")
            cur.execute("SELECT current_database(), count(*) FROM t")
            assert cur.fetchone() == (dbname, 1)
    finally:
        conn.close()
