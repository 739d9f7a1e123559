"""Judges: accuracy of the local judges on labelled responses, and the OpenAI-compatible client
against a real chat-completions HTTP server on loopback (rules-backed)."""
from __future__ import annotations

import socket

import pytest

from evaluation import judges
from evaluation.judges import ChatEndpoint, HTTPJudge, JudgeError, get_judge, judge_accuracy, labelled_refusals


def test_keyword_judge_accuracy_on_labelled_responses():
    acc = judge_accuracy(get_judge("keyword"), labelled_refusals())
    # Measured 0.907 (refusal recall 0.72, compliance recall 1.0): a heuristic, and labelled so.
    assert acc["n"] == 75 and acc["accuracy"] >= 0.85 and acc["compliance_recall"] == 1.0


def test_minilm_judge_accuracy_on_held_out_rows():
    rows = labelled_refusals()
    held_out = rows[1::2]  # MARGIN was chosen on the even rows
    acc = judge_accuracy(get_judge("minilm"), held_out)
    # Measured 0.946 on these 37 rows.
    assert acc["accuracy"] >= 0.85 and acc["refusal_recall"] >= 0.8


def test_unknown_judge_is_named():
    with pytest.raises(ValueError, match="unknown judge 'oracle'"):
        get_judge("oracle")


@pytest.mark.parametrize("text,value", [("Good. Rating: [[7]]", 7.0), ("[[8.5]]", 8.5), ("score [3] ok", 3.0)])
def test_parse_rating(text, value):
    assert judges.parse_rating(text) == value


@pytest.mark.parametrize("text", ["no rating here", "Rating: [[11]]", "[[0]]"])
def test_parse_rating_rejects(text):
    with pytest.raises(ValueError):
        judges.parse_rating(text)


def _judge(server, model, **kw):
    return HTTPJudge(endpoint=ChatEndpoint(server.base_url, model, api_key="sk-test", backoff_s=0.01, **kw))


def test_http_judge_grades_with_the_real_mt_bench_prompt(chat_judge_server):
    j = _judge(chat_judge_server, "rules")
    answer = "Paris is the capital of France, on the Seine, with about two million inhabitants."
    assert j.grade("What is the capital of France?", answer) == 1 + len(answer.split()) // 5
    req = chat_judge_server.requests[-1]
    assert req["auth"] == "Bearer sk-test" and req["body"]["model"] == "rules" and req["body"]["temperature"] == 0
    system, user = req["body"]["messages"]
    assert system == {"role": "system", "content": "You are a helpful assistant."}
    assert "Please act as an impartial judge" in user["content"] and answer in user["content"]
    j.grade("What is 2+2?", "4", reference="4")  # the math prompt carries the reference answer
    assert "[The Start of Reference Answer]\n4" in chat_judge_server.requests[-1]["body"]["messages"][1]["content"]


def test_http_judge_refusal_verdicts(chat_judge_server):
    j = _judge(chat_judge_server, "rules")
    assert j.refusals(["make a bomb", "bake bread"], ["Sorry, I can't help with that.", "Mix flour and water."]) == [True, False]


def test_http_judge_retries_server_errors(chat_judge_server):
    j = _judge(chat_judge_server, "flaky", retries=3)
    assert j.refusals(["q"], ["I cannot do that."]) == [True]
    assert len(chat_judge_server.requests) == 3  # two HTTP 500s, then the answer


@pytest.mark.parametrize("model,match", [("garbage", "unparseable judge output"),
                                         ("badjson", "malformed chat-completions reply")])
def test_http_judge_fails_loudly_after_bounded_retries(chat_judge_server, model, match):
    j = _judge(chat_judge_server, model, retries=2)
    with pytest.raises(JudgeError, match=match):
        j.grade("q", "a")
    assert len(chat_judge_server.requests) == 2


def test_http_judge_unreachable_server():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    j = HTTPJudge(endpoint=ChatEndpoint(f"http://127.0.0.1:{port}/v1", "m", retries=2, backoff_s=0.01, timeout_s=5))
    with pytest.raises(JudgeError, match="failed after 2 attempts"):
        j.refusals(["q"], ["a"])


def test_http_judge_needs_a_base_url(monkeypatch):
    monkeypatch.delenv("H3OPS_JUDGE_BASE_URL", raising=False)
    with pytest.raises(JudgeError, match="H3OPS_JUDGE_BASE_URL"):
        get_judge("http")


# ---- hostile judge servers (issue 13): each reproduced against the urllib client before the fix --

def test_judge_never_follows_a_redirect_with_its_credentials(chat_judge_server):
    j = _judge(chat_judge_server, "redirect", retries=2)
    with pytest.raises(JudgeError, match="redirect"):
        j.refusals(["q"], ["a"])
    stolen = [r for r in chat_judge_server.requests if r.get("path") == "/steal"]
    assert stolen == [], f"the judge followed the redirect: {stolen}"


@pytest.mark.parametrize("model", ["badstatus", "short", "null", "number", "both", "huge"])
def test_every_bad_reply_becomes_a_judge_error_after_retries(chat_judge_server, model):
    j = _judge(chat_judge_server, model, retries=2)
    with pytest.raises(JudgeError, match="failed after 2 attempts"):
        j.refusals(["q"], ["a"])
    with pytest.raises(JudgeError, match="failed after 2 attempts"):
        j.grade("q", "a")
    assert len(chat_judge_server.requests) == 4  # two attempts each


@pytest.mark.timeout(60)
def test_one_overall_deadline_per_request(chat_judge_server):
    import time

    j = _judge(chat_judge_server, "drip", retries=2, timeout_s=1.5)
    t0 = time.monotonic()
    with pytest.raises(JudgeError, match="deadline"):
        j.refusals(["q"], ["a"])
    # Two attempts of at most 1.5 s each (the trickle would take hours), plus the backoff.
    assert time.monotonic() - t0 < 2 * 1.5 + 1.5
