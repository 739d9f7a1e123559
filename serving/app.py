"""The OpenAI-compatible HTTP contract: /v1/models, /v1/chat/completions, /v1/completions, /health,
and the hand-off endpoint /admin/reload.

FastAPI and uvicorn (already in the stack: MLflow's server runs on them) rather than http.server:
request validation with field-level errors, a thread pool for the blocking generate calls, and a
production-grade HTTP/1.1 server. Every answer carries the digest of the version that produced it
(`system_fingerprint`, and `h3ops` with name and version), so a client can tell which model spoke.
`stream: true` answers with server-sent events (chunks, then `data: [DONE]`), as OpenAI and vLLM do.
"""
from __future__ import annotations

import contextlib
import hmac
import json
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from serving.engine import Completion, EngineError
from serving.follower import Follower, HandoffMismatch, SwitchError
from serving.slot import NotReady, Target


class _Request(BaseModel):
    # Unknown OpenAI fields (user, logit_bias, …) are accepted and ignored, as vLLM does.
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1)
    stop: str | list[str] | None = None
    stream: bool = False  # server-sent events, as OpenAI and vLLM send them

    def gen_params(self, default_max: int) -> dict[str, Any]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return {"max_tokens": self.max_tokens or default_max, "temperature": self.temperature,
                "top_p": self.top_p, "stop": stop}


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Request):
    prompt: str | list[str]


class Handoff(BaseModel):
    version: str
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")


def _error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)


def create_app(follower: Follower, served_name: str, *, admin_token: str | None = None,
               default_max_tokens: int = 256) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        # At shutdown, inside the server: uvicorn re-raises SIGTERM once it returns, so code after
        # uvicorn.run never runs. Engine processes (vLLM) must not outlive the front.
        follower.slot.close_all()

    app = FastAPI(title="h3ops serving", docs_url=None, redoc_url=None, lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return _error(400, f"invalid request: {where}", "invalid_request_error")

    def _check_model(name: str) -> JSONResponse | None:
        if name not in (served_name, follower.model_uri):
            return _error(404, f"The model `{name}` does not exist; this server serves `{served_name}`",
                          "invalid_request_error", "model_not_found")
        return None

    def _answer(kind: str, req: _Request, run) -> JSONResponse | dict:
        bad = _check_model(req.model)
        if bad is not None:
            return bad
        try:
            with follower.slot.lease() as served:
                choices, prompt_toks, out_toks = run(served.engine, req.gen_params(default_max_tokens))
        except NotReady as e:
            return _error(503, str(e), "server_error", "not_ready")
        except EngineError as e:
            return _error(400, str(e), "invalid_request_error")
        t: Target = served.target
        return {"id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex}",
                "object": kind, "created": int(time.time()), "model": served_name,
                "system_fingerprint": t.digest, "choices": choices,
                "usage": {"prompt_tokens": prompt_toks, "completion_tokens": out_toks,
                          "total_tokens": prompt_toks + out_toks},
                "h3ops": t.to_dict()}

    def _stream(kind: str, req: _Request, start):
        """Server-sent events: one chunk per generated piece, a last chunk with finish_reason, [DONE].

        The lease is taken before the response starts and released when the stream ends, so a
        switch never changes the model in the middle of a stream."""
        bad = _check_model(req.model)
        if bad is not None:
            return bad
        stack = contextlib.ExitStack()
        try:
            served = stack.enter_context(follower.slot.lease())
            pieces = start(served.engine, req.gen_params(default_max_tokens))
        except NotReady as e:
            stack.close()
            return _error(503, str(e), "server_error", "not_ready")
        except EngineError as e:
            stack.close()
            return _error(400, str(e), "invalid_request_error")
        except BaseException:
            stack.close()
            raise
        t: Target = served.target
        chat = kind == "chat.completion"
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
                "model": served_name, "system_fingerprint": t.digest, "h3ops": t.to_dict()}

        def event(piece: str | None, finish: str | None = None, role: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": ""} if role else ({} if piece is None else {"content": piece})
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
            return f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"

        def events():
            with stack:
                try:
                    if chat:
                        yield event(None, role=True)
                    final = None
                    for item in pieces:
                        if isinstance(item, Completion):
                            final = item
                        else:
                            yield event(item)
                    yield event(None, final.finish_reason if final else "stop")
                    yield "data: [DONE]\n\n"
                except Exception as e:  # the status line is sent: report in the stream, as OpenAI does
                    yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest):
        if req.stream:
            messages = [m.model_dump() for m in req.messages]
            return _stream("chat.completion", req, lambda engine, params: engine.stream_chat(messages, **params))

        def run(engine, params):
            c = engine.chat([m.model_dump() for m in req.messages], **params)
            return ([{"index": 0, "message": {"role": "assistant", "content": c.text},
                      "finish_reason": c.finish_reason, "logprobs": None}], c.prompt_tokens, c.completion_tokens)
        return _answer("chat.completion", req, run)

    @app.post("/v1/completions")
    def completions(req: CompletionRequest):
        if req.stream:
            if not isinstance(req.prompt, str) and len(req.prompt) != 1:
                return _error(400, "invalid request: prompt: stream takes one prompt", "invalid_request_error")
            prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
            return _stream("text_completion", req, lambda engine, params: engine.stream(
                prompt, **{**params, "max_tokens": req.max_tokens or 16}))

        def run(engine, params):
            prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
            outs = [engine.complete(p, **{**params, "max_tokens": req.max_tokens or 16}) for p in prompts]
            return ([{"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
                     for i, c in enumerate(outs)],
                    sum(c.prompt_tokens for c in outs), sum(c.completion_tokens for c in outs))
        return _answer("text_completion", req, run)

    @app.get("/v1/models")
    def models():
        cur = follower.slot.current
        data = [] if cur is None else [{
            "id": served_name, "object": "model", "created": int(cur.loaded_at), "owned_by": "h3ops",
            "root": cur.target.uri, "h3ops": cur.target.to_dict()}]
        return {"object": "list", "data": data}

    @app.get("/health")
    def health():
        status = follower.status()
        return JSONResponse(status, status_code=200 if status["status"] == "ok" else 503)

    @app.post("/admin/reload")
    def reload(body: Handoff, authorization: str | None = Header(default=None)):
        """The hand-off: production is now `version` with `digest`; answers after the switch (or why not).

        It cannot point the server at an arbitrary version, only make it re-resolve its alias now:
        without a token the worst a caller can do is cause a check. Set the token in production."""
        if admin_token and not hmac.compare_digest(authorization or "", f"Bearer {admin_token}"):
            return _error(401, "the hand-off needs the admin token (Authorization: Bearer …)",
                          "authentication_error")
        try:
            return follower.sync(expected=Target("", body.version, body.digest))
        except HandoffMismatch as e:
            return _error(409, str(e), "conflict", "handoff_mismatch")
        except SwitchError as e:
            return _error(422, str(e), "switch_refused", "switch_refused")

    return app
