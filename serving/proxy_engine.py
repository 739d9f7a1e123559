"""An engine that is an OpenAI-compatible server process per version: vLLM's, on GPUs.

vLLM's OpenAI server serves one model for its whole life, so it cannot follow an alias itself.
`h3ops serve --engine vllm` keeps the front (contract, follower, atomic switch) and runs one
`vllm serve <verified folder>` per version behind it on a loopback port: a new version's server
starts beside the old one (each gets a share of the GPU, --gpu-memory-utilization), answers
/health and one warm-up completion, then the switch happens and the old process is stopped after
its last request, exactly as with the in-process engine.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from serving.engine import Completion, EngineError

VLLM_COMMAND = ("vllm serve {folder} --host 127.0.0.1 --port {port} --served-model-name {name} "
                "--gpu-memory-utilization {gpu_fraction} --generation-config vllm")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProxyEngine:
    def __init__(self, folder: str | Path, command: str, *, log_dir: str | Path, ready_timeout_s: float = 1200.0,
                 **fields: str):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        argv = shlex.split(command.format(folder=folder, port=self.port, **fields))
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = log_dir / f"engine-{self.port}.log"
        with open(self.log, "wb") as out:
            # Its own process group: stopping the engine stops every worker it forked.
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._await_ready(ready_timeout_s)
            self.model_id = self._get("/v1/models")["data"][0]["id"]
        except BaseException:
            self.close()
            raise
        self.model = self.proc  # what `close` drops; mirrors TransformersEngine.model

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def _await_ready(self, deadline_s: float) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise EngineError(f"engine exited with {self.proc.returncode} before it was ready:\n{self._tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(self.base + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            time.sleep(0.5)
        raise EngineError(f"engine not ready after {deadline_s:.0f} s:\n{self._tail()}")

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return json.loads(r.read())

    def _post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            with contextlib.suppress(ValueError, KeyError, TypeError):
                text = json.loads(text)["error"]["message"]
            if 400 <= e.code < 500:
                raise EngineError(text) from None
            raise RuntimeError(f"engine answered HTTP {e.code}: {text}") from None

    @staticmethod
    def _params(max_tokens=16, temperature=0.0, top_p=1.0, stop=None, **_ignored) -> dict:
        return {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "stop": stop or None}

    @staticmethod
    def _completion(body: dict, text: str) -> Completion:
        usage = body.get("usage") or {}
        return Completion(text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)),
                          body["choices"][0].get("finish_reason") or "stop")

    def chat(self, messages: list[dict], **kw) -> Completion:
        body = self._post("/v1/chat/completions", {"model": self.model_id, "messages": messages, **self._params(**kw)})
        return self._completion(body, body["choices"][0]["message"]["content"] or "")

    def complete(self, prompt: str, **kw) -> Completion:
        body = self._post("/v1/completions", {"model": self.model_id, "prompt": prompt, **self._params(**kw)})
        return self._completion(body, body["choices"][0]["text"])

    # vLLM streams itself; through this front a stream is one piece (the contract, not the timing).
    def stream_chat(self, messages: list[dict], **kw):
        c = self.chat(messages, **kw)
        return iter([c.text, c] if c.text else [c])

    def stream(self, prompt: str, **kw):
        c = self.complete(prompt, **kw)
        return iter([c.text, c] if c.text else [c])

    def warm_up(self) -> None:
        self.complete("Hello", max_tokens=1)

    def close(self) -> None:
        self.model = None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
