"""The serving app in-process (FastAPI's test client) on a real MLflow server and real tiny models:
bad requests get clear errors, a version that fails to load is never switched to, and a switch
never changes the model under a request that already started."""
from __future__ import annotations

import json
import shutil
import threading

import pytest

from registry.api import Registry
from tests.fixtures.servers import unique, wait_until

pytestmark = pytest.mark.slow
DIGEST = "h3ops.content_digest"


def _manual(reg: Registry, project: str, uri: str):
    # Serving follows the alias whoever moves it: an audited forced move is enough here.
    return reg.promote(project, uri, None, force=True, reason="serving test: ops promotion", by="test")


@pytest.fixture(scope="module")
def setup(mlflow_sqlite, tiny_candidates, tmp_path_factory, one_torch_thread):
    """v1 good, v2 good, v3 registers fine (digest matches) but cannot load (config/weights disagree)."""
    reg = Registry(mlflow_sqlite.url)
    project = unique("app")
    broken = tmp_path_factory.mktemp("broken") / "ckpt"
    shutil.copytree(tiny_candidates[2], broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["intermediate_size"] *= 2
    (broken / "config.json").write_text(json.dumps(cfg))
    refs = [reg.register_checkpoint(f, project=project, kind="merged", method="linear")
            for f in (tiny_candidates[0], tiny_candidates[1], broken)]
    _manual(reg, project, refs[0].uri)
    return reg, project, refs


@pytest.fixture
def app(setup, tmp_path):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.engine import TransformersEngine
    from serving.follower import Follower

    reg, project, refs = setup
    follower = Follower(reg, f"models:/{refs[0].name}@production", tmp_path / "cache",
                        load=lambda folder, target: TransformersEngine(folder, device="cpu"))
    client = TestClient(create_app(follower, refs[0].name, admin_token="s3cret"))
    return client, follower, refs


def _chat(client, model, **kw):
    return client.post("/v1/chat/completions", json={"model": model, "max_tokens": 2,
                                                     "messages": [{"role": "user", "content": "hi"}], **kw})


def test_not_ready_then_bad_requests_are_named(app):
    client, follower, (v1, _, _) = app
    assert client.get("/health").status_code == 503  # nothing loaded yet
    assert _chat(client, v1.name).status_code == 503
    follower.sync()
    assert client.get("/health").json()["served"]["version"] == v1.version
    ok = _chat(client, v1.name)
    assert ok.status_code == 200 and ok.json()["system_fingerprint"] == v1.tags[DIGEST]
    comp = client.post("/v1/completions", json={"model": v1.name, "prompt": ["a", "b"], "max_tokens": 2})
    assert comp.status_code == 200 and [c["index"] for c in comp.json()["choices"]] == [0, 1]

    r = _chat(client, "gpt-4")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = client.post("/v1/completions", json={"model": v1.name, "prompt": ["a", "b"], "stream": True})
    assert r.status_code == 400 and "stream takes one prompt" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json={"model": v1.name})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    r = _chat(client, v1.name, max_tokens=10_000)  # the tiny Llama has 512 positions
    assert r.status_code == 400 and "context of 512 tokens" in r.json()["error"]["message"]
    r = _chat(client, v1.name, temperature=5)
    assert r.status_code == 400 and "temperature" in r.json()["error"]["message"]


def test_handoff_needs_the_token_and_the_version_the_alias_names(app, setup):
    client, follower, (v1, v2, _) = app
    reg, project, _ = setup
    follower.sync()
    body = {"version": v2.version, "digest": v2.tags[DIGEST]}
    assert client.post("/admin/reload", json=body).status_code == 401
    auth = {"Authorization": "Bearer s3cret"}
    r = client.post("/admin/reload", json={"version": "1", "digest": "md5:x"}, headers=auth)
    assert r.status_code == 400 and "digest" in r.json()["error"]["message"]
    # The alias still names version 1: a hand-off of version 2 is a conflict, nothing switches.
    r = client.post("/admin/reload", json=body, headers=auth)
    assert r.status_code == 409 and f"resolves to version {v1.version}" in r.json()["error"]["message"]
    assert follower.slot.current.target.version == v1.version


def test_a_version_that_fails_to_load_is_never_switched_to(app, setup):
    client, follower, (v1, _, v3) = app
    reg, project, _ = setup
    follower.sync()
    _manual(reg, project, v3.uri)
    try:
        r = client.post("/admin/reload", json={"version": v3.version, "digest": v3.tags[DIGEST]},
                        headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 422
        assert "size mismatch" in r.json()["error"]["message"] or "mismatch" in r.json()["error"]["message"]
        assert follower.slot.current.target.version == v1.version
        assert _chat(client, v1.name).json()["h3ops"]["version"] == v1.version
        health = client.get("/health").json()
        assert v3.version in health["refused"] and health["loaded"] == 1
        # The poller does not retry a refused version.
        assert follower.poll_once() is None and follower.slot.current.target.version == v1.version
    finally:
        reg.rollback(project)


def test_a_request_in_flight_finishes_on_the_version_it_started_on(app, setup):
    from serving.slot import Served, Target

    client, follower, (v1, v2, _) = app
    follower.sync()
    slot = follower.slot
    old = slot.current
    with slot.lease() as held:  # a request that started before the switch
        t2 = Target(v2.name, v2.version, v2.tags[DIGEST])
        slot.swap(Served(t2, follower.load(follower._fetch(t2), t2)))
        with slot.lease() as fresh:
            assert fresh.target.version == v2.version  # new requests see the new version at once
        retired = threading.Thread(target=slot.retire, args=(old,))
        retired.start()
        retired.join(0.5)
        assert retired.is_alive() and old.engine.model is not None  # not unloaded under the request
        assert held.engine.complete("hi", max_tokens=1).completion_tokens == 1
    wait_until(lambda: not retired.is_alive(), "old version unloaded after its last request", 30)
    assert old.engine.model is None and slot.loaded == 1


def _events(resp) -> list:
    lines = [x for x in resp.text.split("\n\n") if x.strip()]
    assert all(x.startswith("data: ") for x in lines), lines
    return [x[len("data: "):] for x in lines]


def test_streaming_sends_the_answer_piece_by_piece(app):
    client, follower, (v1, _, _) = app
    follower.sync()
    body = {"model": v1.name, "max_tokens": 12, "temperature": 0,
            "messages": [{"role": "user", "content": "Where does the sun rise?"}]}
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        resp.read()
        events = _events(resp)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["system_fingerprint"] == v1.tags[DIGEST] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length") and len(chunks) > 3  # several pieces
    with client.stream("POST", "/v1/completions", json={"model": v1.name, "prompt": "The", "max_tokens": 4,
                                                        "stream": True}) as resp:
        resp.read()
        events = _events(resp)
    assert events[-1] == "[DONE]" and json.loads(events[0])["object"] == "text_completion"
    # Bad input is refused before the stream starts.
    r = client.post("/v1/chat/completions", json={**body, "stream": True, "max_tokens": 10_000})
    assert r.status_code == 400 and "context" in r.json()["error"]["message"]

    # The pieces add up to exactly the answer, also when bytes of one character span tokens (this
    # random model emits such bytes), and a stop string ends both at the same place. Compared
    # within one generation: across threads, float sums differ and greedy near-ties can flip.
    engine = follower.slot.current.engine
    *pieces, final = engine.stream("The quick", max_tokens=10)
    assert "".join(pieces) == final.text and len(pieces) > 1
    stop = final.text[len(final.text) // 2:][:2]
    *pieces, final = engine.stream("The quick", max_tokens=10, stop=[stop])
    assert "".join(pieces) == final.text and stop not in final.text and final.finish_reason == "stop"
