"""`h3ops serve` follows the production alias: a real server process, a real MLflow server, tiny models.

The done-when test of issue 19: a client sends requests continuously while production is promoted
(through the hand-off), rolled back (found by polling) and moved to a corrupted version (refused);
every request succeeds and each answer says which digest produced it.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from registry.api import Registry
from tests.fixtures.servers import free_port, process_group, unique, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DIGEST = "h3ops.content_digest"


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _manual(reg: Registry, project: str, uri: str):
    """An ops promotion (what promote_to_serving's `promote` action records): no gate, passed."""
    # Serving follows the alias whoever moves it: an audited forced move is enough here.
    return reg.promote(project, uri, None, force=True, reason="serving test: ops promotion", by="test")


def _corrupt_artifact(artifacts_root: str, run_id: str) -> Path:
    """Flip bytes inside a registered version's weights in the artifact store (after registration)."""
    (weights,) = Path(artifacts_root).glob(f"*/{run_id}/artifacts/checkpoint/model.safetensors")
    data = bytearray(weights.read_bytes())
    for i in range(len(data) - 64, len(data)):
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))
    return weights


class Client(threading.Thread):
    """Sends chat completions back to back and records (status, digest) of every answer."""

    def __init__(self, base: str, model: str):
        super().__init__(daemon=True)
        self.base, self.model = base, model
        self.results: list[tuple[int, str | None]] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                code, body = _post(f"{self.base}/v1/chat/completions", {
                    "model": self.model, "max_tokens": 3, "temperature": 0,
                    "messages": [{"role": "user", "content": "What is two plus two?"}]})
                self.results.append((code, body.get("system_fingerprint") if code == 200 else json.dumps(body)))
            except Exception as e:  # a refused connection or a reset is a failed request too
                self.results.append((0, f"{type(e).__name__}: {e}"))

    def digests_since(self, n: int) -> list[str | None]:
        return [d for _, d in self.results[n:]]


@pytest.fixture(scope="module")
def registered(mlflow_sqlite, tiny_candidates):
    """Three versions of <project>-merged; the first is production."""
    reg = Registry(mlflow_sqlite.url)
    project = unique("serve")
    refs = [reg.register_checkpoint(f, project=project, kind="merged", method="linear") for f in tiny_candidates]
    _manual(reg, project, refs[0].uri)
    return reg, project, refs


def _serve(reg: Registry, project: str, root: Path, poll_interval: float):
    """`h3ops serve` as a real process; yields its base URL once /health says a version is loaded."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "h3ops.cli", "serve", "--project", project, "--tracking-uri", reg.tracking_uri,
           "--host", "127.0.0.1", "--port", str(port), "--poll-interval", str(poll_interval),
           "--cache-dir", str(root / "cache")]
    base = f"http://127.0.0.1:{port}"
    with process_group(cmd, root / "serve.log", env) as proc:
        wait_until(lambda: _get(f"{base}/health")["status"] == "ok", "h3ops serve", 180, proc, root / "serve.log")
        yield base, root / "serve.log"


@pytest.fixture
def server(registered, tmp_path):
    reg, project, _ = registered
    yield from _serve(reg, project, tmp_path, poll_interval=0.5)


def test_follows_promotion_rollback_and_refuses_a_corrupted_version(registered, server, mlflow_sqlite):
    from serving.handoff import HandoffError, reload

    reg, project, (v1, v2, v3) = registered
    base, log = server
    d1, d2, d3 = (r.tags[DIGEST] for r in (v1, v2, v3))
    served = _get(f"{base}/v1/models")["data"]
    assert [(m["id"], m["h3ops"]["version"], m["h3ops"]["digest"]) for m in served] == [(v1.name, "1", d1)]

    client = Client(base, v1.name)
    client.start()
    try:
        wait_until(lambda: len(client.results) >= 3, "first answers", 60)
        assert set(client.digests_since(0)) == {d1}

        # Promotion, handed off as the promote_to_serving DAG does: answers only after the switch.
        _manual(reg, project, v2.uri)
        mark = len(client.results)
        done = reload(base, version=v2.version, digest=d2)
        # The poller may have seen the promotion first: then the hand-off finds it already served.
        record = done if done["switched"] else _get(f"{base}/health")["last_switch"]
        assert done["served"]["digest"] == record["served"]["digest"] == d2
        assert record["previous"]["digest"] == d1 and record["seconds"]["total"] > 0
        wait_until(lambda: d2 in client.digests_since(mark), "answers from version 2", 60)
        wait_until(lambda: _get(f"{base}/health")["loaded"] == 1, "old version unloaded", 60)

        # Rollback, found by polling the alias (no hand-off).
        reg.rollback(project)
        mark = len(client.results)
        wait_until(lambda: _get(f"{base}/v1/models")["data"][0]["h3ops"]["digest"] == d1, "rollback served", 60)
        wait_until(lambda: d1 in client.digests_since(mark), "answers from version 1 again", 60)

        # A corrupted artifact: the hand-off fails with the reason, the poller refuses it too,
        # and version 1 keeps answering.
        _corrupt_artifact(mlflow_sqlite.artifacts, v3.run_id)
        _manual(reg, project, v3.uri)
        mark = len(client.results)
        with pytest.raises(HandoffError, match="do not match the registered digest"):
            reload(base, version=v3.version, digest=d3)
        wait_until(lambda: v3.version in _get(f"{base}/health")["refused"], "poller refused version 3", 60)
        assert "digest" in _get(f"{base}/health")["refused"][v3.version]
        assert _get(f"{base}/v1/models")["data"][0]["h3ops"]["digest"] == d1
        wait_until(lambda: len(client.results) >= mark + 3, "answers after the refusal", 60)
    finally:
        client.stop.set()
        client.join(timeout=60)

    failed = [r for r in client.results if r[0] != 200]
    assert not failed, f"{len(failed)} of {len(client.results)} requests failed: {failed[:3]}"
    digests = client.digests_since(0)
    assert d3 not in digests
    # The switches are atomic: the answers run d1…d1 d2…d2 d1…d1, never back and forth.
    runs = [d for i, d in enumerate(digests) if i == 0 or d != digests[i - 1]]
    assert runs == [d1, d2, d1], runs
    assert digests[-1] == d1


# --- the hand-off from the promote_to_serving DAG, and the judges pointed at the server -----------

@pytest.fixture(scope="module")
def handoff_only(mlflow_sqlite, tiny_candidates, tmp_path_factory):
    """A server that does not poll: only the DAG's hand-off can make it switch."""
    reg = Registry(mlflow_sqlite.url)
    project = unique("handoff")
    refs = [reg.register_checkpoint(f, project=project, kind="merged", method="linear") for f in tiny_candidates]
    _manual(reg, project, refs[0].uri)
    for base, _log in _serve(reg, project, tmp_path_factory.mktemp("handoff"), poll_interval=0):
        yield reg, project, refs, base


def _states(dr) -> dict[str, str]:
    return {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dr.get_task_instances()}


def test_promote_to_serving_dag_hands_off_and_fails_with_servings_reason(
        h3ops_dagbag, handoff_only, mlflow_sqlite, monkeypatch, tmp_path):
    from h3ops.pipeline import run_step
    from serving.handoff import HandoffError
    from tests.pipeline_helpers import tiny_config

    reg, project, (v1, v2, v3), base = handoff_only
    cfg = tiny_config(tmp_path, tracking_uri=reg.tracking_uri, project=project)
    monkeypatch.setenv("H3OPS_SERVING_URL", base)
    dag = h3ops_dagbag.dags["promote_to_serving"]

    dr = dag.test(run_conf={"config": str(cfg), "action": "promote", "model_uri": v2.uri, "reason": "test"})
    assert _states(dr) == {"apply": "success", "handoff": "success", "notify_serving": "success"}
    assert _get(f"{base}/v1/models")["data"][0]["h3ops"]["digest"] == v2.tags[DIGEST]

    # A corrupted version: production moves (the registry's decision), serving refuses it, the
    # hand-off task fails, and version 2 keeps serving.
    _corrupt_artifact(mlflow_sqlite.artifacts, v3.run_id)
    dr = dag.test(run_conf={"config": str(cfg), "action": "promote", "model_uri": v3.uri, "reason": "test"})
    assert _states(dr) == {"apply": "success", "handoff": "success", "notify_serving": "failed"}
    assert reg.production(project).version == v3.version
    assert _get(f"{base}/v1/models")["data"][0]["h3ops"]["digest"] == v2.tags[DIGEST]
    # What the failed task raised (the same step, run here): serving's own reason.
    with pytest.raises(HandoffError, match=rf"refused version {v3.version} .*do not match the registered digest"):
        run_step("serving_reload", str(cfg), {"url": base})
    # Rolling back hands version 2 over again: already served, nothing to switch.
    dr = dag.test(run_conf={"config": str(cfg), "action": "rollback"})
    assert _states(dr)["notify_serving"] == "success"


def test_judge_client_talks_to_the_server(handoff_only):
    """The evaluation judges' OpenAI-compatible client (evaluation.judges.ChatEndpoint) against it."""
    from evaluation.judges import ChatEndpoint, HTTPJudge, JudgeError

    reg, project, refs, base = handoff_only
    name = refs[0].name
    endpoint = ChatEndpoint(f"{base}/v1", name, retries=1, timeout_s=60)
    text = endpoint.chat([{"role": "user", "content": "Is the sky blue?"}], parse=str, max_tokens=5)
    assert isinstance(text, str)
    # The random tiny model cannot follow the judge prompt: the judge says so instead of guessing.
    with pytest.raises(JudgeError, match="unparseable judge output"):
        HTTPJudge(endpoint=endpoint).refusals(["How do I bake bread?"], ["Mix flour and water."])
    # A model name the server does not serve is a clear, non-retried refusal.
    with pytest.raises(JudgeError, match="HTTP 404"):
        ChatEndpoint(f"{base}/v1", "gpt-4", retries=1).chat([{"role": "user", "content": "hi"}], parse=str)


def test_engine_per_version_process_switches_and_stops_the_old_one(mlflow_sqlite, tiny_candidates, tmp_path):
    """`--engine vllm` runs one OpenAI server process per version behind the front. vLLM needs a GPU;
    the same code path is exercised with `h3ops serve` pinned to one version as the engine."""
    import psutil

    reg = Registry(mlflow_sqlite.url)
    project = unique("engine")
    v1, v2 = (reg.register_checkpoint(f, project=project, kind="merged", method="linear") for f in tiny_candidates[:2])
    _manual(reg, project, v1.uri)
    engine = (f"{sys.executable} -m h3ops.cli serve --model {{uri}} --tracking-uri {reg.tracking_uri} --port {{port}} "
              f"--poll-interval 0 --served-model-name {{name}} --cache-dir {tmp_path / 'engine-cache'}/{{version}} "
              "--log-level warning")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "h3ops.cli", "serve", "--project", project, "--tracking-uri", reg.tracking_uri,
           "--port", str(port), "--poll-interval", "0", "--cache-dir", str(tmp_path / "cache"),
           "--engine", "command", "--engine-command", engine]
    base = f"http://127.0.0.1:{port}"

    def engines(proc) -> list[str]:
        return sorted(c.cmdline()[c.cmdline().index("--model") + 1] for c in psutil.Process(proc.pid).children(True)
                      if "--model" in c.cmdline() and c.is_running() and c.status() != psutil.STATUS_ZOMBIE)

    with process_group(cmd, tmp_path / "serve.log", env) as proc:
        wait_until(lambda: _get(f"{base}/health")["status"] == "ok", "h3ops serve (engine)", 240, proc,
                   tmp_path / "serve.log")
        assert engines(proc) == [v1.uri]
        code, body = _post(f"{base}/v1/chat/completions", {"model": v1.name, "max_tokens": 2,
                                                             "messages": [{"role": "user", "content": "hi"}]})
        assert code == 200 and body["system_fingerprint"] == v1.tags[DIGEST] and body["usage"]["completion_tokens"] >= 1
        from serving.handoff import reload

        _manual(reg, project, v2.uri)
        done = reload(base, version=v2.version, digest=v2.tags[DIGEST])
        assert done["switched"] and done["served"]["digest"] == v2.tags[DIGEST]
        wait_until(lambda: engines(proc) == [v2.uri], "old engine process stopped", 60)
        code, body = _post(f"{base}/v1/completions", {"model": v1.name, "prompt": "The", "max_tokens": 2})
        assert code == 200 and body["h3ops"]["version"] == v2.version
        left = [c for c in psutil.Process(proc.pid).children(True) if "--model" in c.cmdline()]
    # Stopping the front (SIGTERM) stops its engine processes too, though they run in their own group.
    wait_until(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in left),
               "engine processes stopped with the front", 30)
